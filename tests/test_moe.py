"""Mixture-of-Experts models: UALTrainer adds the router load-balancing loss exactly as SFTTrainer 1.16 does.

Tiny random Qwen3-MoE and GPT-OSS models are built here from their transformers configs (nothing is downloaded),
with the tiny model's tokenizer. At eps = 0 UALTrainer's loss and gradients must equal SFTTrainer's, router loss
included; with the coefficient set to 0 the router loss must be gone from both.
"""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GptOssConfig, Qwen3MoeConfig
from trl import SFTConfig, SFTTrainer

from conftest import cpu_config
from test_trainer import assert_matches_sft, loss_and_grads, raw_rows, trl_dataset
from ual.trainer import UALTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def build(kind: str, tokenizer):
    common = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, num_experts_per_tok=2, router_aux_loss_coef=0.05,
                  output_router_logits=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=None, tie_word_embeddings=False, max_position_embeddings=256)
    if kind == "qwen3_moe":
        config = Qwen3MoeConfig(**common, num_experts=4, intermediate_size=64, moe_intermediate_size=32,
                                decoder_sparse_step=1)
    else:
        config = GptOssConfig(**common, num_local_experts=4, intermediate_size=32, sliding_window=32,
                              layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module", params=["qwen3_moe", "gpt_oss"])
def moe_model(request, tmp_path_factory, tiny_model_path):
    out = tmp_path_factory.mktemp(request.param)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    build(request.param, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copy(f"{tiny_model_path}/chat_template.jinja", out / "chat_template.jinja")
    return str(out)


@pytest.mark.parametrize("coef", [0.05, 0.0])
def test_router_loss_is_added_as_sft_trainer_adds_it(tmp_path, moe_model, coef):
    rows = raw_rows(6)
    common = dict(per_device_train_batch_size=3, gradient_accumulation_steps=2, router_aux_loss_coef=coef)
    ual = UALTrainer(model=moe_model, args=cpu_config(tmp_path / "u", smoothing_strategy="none", **common),
                     train_dataset=trl_dataset(rows))
    sft_args = SFTConfig(output_dir=str(tmp_path / "sft"), use_cpu=True, bf16=False, activation_checkpointing=False,
                         report_to="none", max_length=64, seed=0, save_strategy="no", **common)
    sft = SFTTrainer(model=moe_model, args=sft_args, train_dataset=trl_dataset(rows, columns=()))
    assert ual.aux_loss_enabled == sft.aux_loss_enabled == (coef != 0)
    batch = next(iter(ual.get_train_dataloader()))
    for trainer in (ual, sft):
        trainer.current_gradient_accumulation_steps = 2
    losses, grads = loss_and_grads(ual, sft, batch, num_items_in_batch=40)
    assert_matches_sft(losses, grads)  # the float32 error analysis of the dense parity test (tests/test_trainer.py)
    router = [n for n in grads[0] if "router" in n or ".gate." in n or n.endswith("gate.weight")]
    assert router, "the test must see the router's parameters"
    if coef:
        assert ual._metrics["train"]["aux_loss"] and ual._metrics["train"]["aux_loss"][-1] == pytest.approx(
            sft._metrics["train"]["aux_loss"][-1], rel=1e-6)
        # and the router loss is really in there: without it the loss is smaller by coef * aux / steps
        ual.aux_loss_enabled = False
        plain = ual.compute_loss(ual.model, dict(batch), num_items_in_batch=40).detach()
        expected_gap = coef * ual._metrics["train"]["aux_loss"][-1] / 2
        assert (losses[0] - plain).item() == pytest.approx(expected_gap, rel=1e-4)
    else:
        assert not ual._metrics["train"].get("aux_loss")


def test_moe_trains_with_uncertainty_smoothing(tmp_path, moe_model):
    trainer = UALTrainer(model=moe_model, args=cpu_config(tmp_path, smoothing_strategy="uncertainty", max_steps=3,
                                                          logging_steps=1, router_aux_loss_coef=0.05),
                         train_dataset=trl_dataset(raw_rows(8)))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logged)
    assert all("aux_loss" in h for h in logged)
