"""PEFT prompt learning (prompt tuning, p-tuning): PEFT prepends virtual tokens to the inputs and -100 to the
labels; the per-token eps must line up with the real tokens and give the virtual ones no loss. Checked against
SFTTrainer at eps = 0 and against a float64 loss from the model's own logits at eps > 0."""

import pytest
import torch
from peft import PromptEncoderConfig, PromptTuningConfig
from trl import SFTConfig, SFTTrainer

from conftest import cpu_config
from test_trainer import assert_matches_sft, loss_and_grads, paper_loss_from_logits, raw_rows, trl_dataset
from ual.data import TOKEN_SMOOTHING
from ual.trainer import UALTrainer

pytestmark = pytest.mark.usefixtures("one_thread")
VIRTUAL = 4


def peft_config(kind):
    if kind == "prompt_tuning":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL)
    return PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL, encoder_hidden_size=16)


@pytest.mark.parametrize("kind", ["prompt_tuning", "p_tuning"])
def test_virtual_tokens_carry_no_smoothing_and_no_loss(tmp_path, tiny_model_path, kind):
    rows = raw_rows(6)
    ual = UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path / "u", smoothing_strategy="none",
                                                            per_device_train_batch_size=6),
                     train_dataset=trl_dataset(rows), peft_config=peft_config(kind))
    sft = SFTTrainer(model=tiny_model_path, args=SFTConfig(output_dir=str(tmp_path / "s"), use_cpu=True, bf16=False,
                                                           activation_checkpointing=False, report_to="none",
                                                           max_length=64, per_device_train_batch_size=6,
                                                           save_strategy="no"),
                     train_dataset=trl_dataset(rows, columns=()), peft_config=peft_config(kind))
    sft.model.prompt_encoder.load_state_dict(ual.model.prompt_encoder.state_dict())  # the same virtual tokens
    batch = next(iter(ual.get_train_dataloader()))
    losses, grads = loss_and_grads(ual, sft, batch)
    assert grads[0], "only the prompt encoder trains"
    assert_matches_sft(losses, grads)  # the float32 error analysis of tests/test_trainer.py

    # eps > 0 on the real tokens: the float64 loss from the model's own logits, virtual positions dropped
    eps = 0.3
    model = ual.model.eval()
    inputs = {k: v for k, v in batch.items() if k not in (TOKEN_SMOOTHING, "labels")}
    with torch.no_grad():
        logits = model(**inputs).logits[:, VIRTUAL:-1]
        out = model(**inputs, labels=batch["labels"], ual_smoothing=torch.full_like(batch[TOKEN_SMOOTHING], eps),
                    ual_sample_ids=torch.zeros_like(batch["labels"]))
    assert out.label_mask.shape[1] == batch["labels"].shape[1] - 1 + VIRTUAL and out.label_mask[:, :VIRTUAL].sum() == 0
    want = paper_loss_from_logits(logits, batch["labels"], eps)
    # float32 head vs float64: about sqrt(V) * 6e-8 * ln V ~ 1e-5 (tests/test_logit_scaling.py)
    torch.testing.assert_close(out.per_token_loss.double(), want, rtol=2e-5, atol=2e-5)
    assert torch.all(out.smoothing == eps)


def test_prompt_tuning_trains(tmp_path, tiny_model_path):
    trainer = UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path, smoothing_strategy="uncertainty",
                                                                max_steps=2, logging_steps=1),
                         train_dataset=trl_dataset(raw_rows(8)), peft_config=peft_config("prompt_tuning"))
    trainer.train()
    assert len([h for h in trainer.state.log_history if "loss" in h]) == 2
