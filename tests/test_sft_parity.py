"""UALTrainer against SFTTrainer across the configurations TRL's own SFTTrainer tests exercise: at eps = 0 the
two must give the same loss and gradients on the same batch (and the same eval loss), whatever the packing,
loss masking, activation checkpointing or adapter.

Tolerances: the float32 error analysis of tests/test_trainer.py, 1e-5 of each gradient tensor's scale.
"""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from conftest import cpu_config
from test_trainer import assert_matches_sft, loss_and_grads, raw_rows
from ual.data import TOKEN_SMOOTHING
from ual.formats import convert
from ual.trainer import UALTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def rows_of(shape: str) -> list[dict]:
    out = []
    for r in raw_rows(8):
        if shape == "messages":
            ex = {"messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": r["instruction"]},
                               {"role": "assistant", "content": r["output"]},
                               {"role": "user", "content": "Again?"},
                               {"role": "assistant", "content": r["output"][:12]}]}
        elif shape == "prompt_completion":
            ex = convert(r, "alpaca")
        else:
            ex = {"text": r["instruction"] + " " + r["output"]}
        out.append({**ex, "uncertainty": r["uncertainty"]})
    return out


CASES = {
    "packing (bfd, padding-free)": ("prompt_completion", dict(packing=True, max_length=96), None),
    "assistant-only loss, multi-turn": ("messages", dict(assistant_only_loss=True), None),
    "every token of messages": ("messages", dict(), None),
    "completion_only_loss false": ("prompt_completion", dict(completion_only_loss=False), None),
    "plain text": ("text", dict(), None),
    "activation checkpointing": ("prompt_completion", dict(activation_checkpointing=True), None),
    "LoRA": ("prompt_completion", dict(), dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_zero_smoothing_matches_sft_trainer(tmp_path, tiny_model_path, case):
    shape, extra, lora = CASES[case]
    rows = rows_of(shape)
    common = dict(per_device_train_batch_size=4, per_device_eval_batch_size=4, max_length=extra.pop("max_length", 64),
                  **extra)
    peft = (lambda: LoraConfig(**lora)) if lora else (lambda: None)
    ual = UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path / "u", smoothing_strategy="none", **common),
                     train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows[:4]),
                     peft_config=peft())
    plain = [{k: v for k, v in r.items() if k != "uncertainty"} for r in rows]
    sft = SFTTrainer(model=tiny_model_path,
                     args=SFTConfig(output_dir=str(tmp_path / "s"), use_cpu=True, bf16=False, report_to="none",
                                    save_strategy="no", seed=0, **{"activation_checkpointing": False, **common}),
                     train_dataset=Dataset.from_list(plain), eval_dataset=Dataset.from_list(plain[:4]),
                     peft_config=peft())
    if lora:  # the same initial adapter (LoRA's A is random)
        sft.model.load_state_dict(ual.model.state_dict())
    batch = next(iter(ual.get_train_dataloader()))
    assert torch.all(batch[TOKEN_SMOOTHING] == 0)
    losses, grads = loss_and_grads(ual, sft, batch)
    assert_matches_sft(losses, grads)
    # the eval loss over the same eval set (each trainer prepares it itself, as SFTTrainer does)
    assert ual.evaluate()["eval_loss"] == pytest.approx(sft.evaluate()["eval_loss"], rel=1e-6)
