"""Models that transform their logits (Cohere's logit_scale, Granite's logits_scaling, Gemma-2's soft cap): the
smoothed head applies the same transform as the model's own forward and TRL's fused head. At eps = 0 UALTrainer
equals SFTTrainer (loss and gradients); at eps > 0 its per-token loss equals a float64 loss computed from the
model's own logits."""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CohereConfig, Gemma2Config, GraniteConfig
from trl import SFTConfig, SFTTrainer

from conftest import cpu_config
from test_trainer import assert_matches_sft, loss_and_grads, paper_loss_from_logits, raw_rows, trl_dataset
from ual.data import TOKEN_SMOOTHING
from ual.trainer import UALTrainer, logit_scale_of

pytestmark = pytest.mark.usefixtures("one_thread")


def build(kind, tokenizer):
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=None, max_position_embeddings=256,
                  tie_word_embeddings=False)
    if kind == "cohere":
        config = CohereConfig(**common, logit_scale=0.37)
    elif kind == "granite":
        config = GraniteConfig(**common, logits_scaling=3.0)
    else:
        config = Gemma2Config(**common, head_dim=8, final_logit_softcapping=0.5)  # small: the cap bites
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def save(kind, tmp_path, tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    build(kind, tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    shutil.copy(f"{tiny_model_path}/chat_template.jinja", tmp_path / "chat_template.jinja")
    return str(tmp_path)


@pytest.mark.parametrize("kind, factor", [("cohere", 0.37), ("granite", 1 / 3.0), ("gemma2", 1.0)])
def test_scaled_logits_match_sft_trainer_and_a_float64_reference(tmp_path, tiny_model_path, kind, factor):
    path = save(kind, tmp_path / kind, tiny_model_path)
    rows = raw_rows(6)
    ual = UALTrainer(model=path, args=cpu_config(tmp_path / "u", smoothing_strategy="none",
                                                 per_device_train_batch_size=6), train_dataset=trl_dataset(rows))
    assert logit_scale_of(ual.model.config) == pytest.approx(factor)
    sft = SFTTrainer(model=path, args=SFTConfig(output_dir=str(tmp_path / "s"), use_cpu=True, bf16=False,
                                                activation_checkpointing=False, report_to="none", max_length=64,
                                                per_device_train_batch_size=6, save_strategy="no"),
                     train_dataset=trl_dataset(rows, columns=()))
    batch = next(iter(ual.get_train_dataloader()))
    losses, grads = loss_and_grads(ual, sft, batch)
    assert_matches_sft(losses, grads)  # the float32 error analysis of tests/test_trainer.py

    # eps > 0: the per-token loss against one computed in float64 from the model's own (scaled) logits
    eps = 0.2
    model = ual.model.eval()
    inputs = {k: v for k, v in batch.items() if k not in (TOKEN_SMOOTHING, "labels")}
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1]
        out = model(**inputs, labels=batch["labels"], ual_smoothing=torch.full_like(batch[TOKEN_SMOOTHING], eps),
                    ual_sample_ids=torch.zeros_like(batch["labels"]))
    want = paper_loss_from_logits(logits, batch["labels"], eps)
    # float32 head vs float64: a loss near ln V ~ 7 summed over V ~ 1000 float32 terms differs by about
    # sqrt(V) * 6e-8 * 7 ~ 1e-5 at most; a missing scale factor changes it by 10 % or more
    torch.testing.assert_close(out.per_token_loss.double(), want, rtol=2e-5, atol=2e-5)
