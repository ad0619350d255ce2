"""UALTrainer against SFTTrainer across the configurations TRL's own SFTTrainer tests exercise: at eps = 0 the
two must give the same loss and gradients on the same batch (and the same eval loss), whatever the packing,
loss masking, activation checkpointing or adapter.

Tolerances: the float32 error analysis of tests/test_trainer.py, 1e-5 of each gradient tensor's scale.
"""

import copy

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


# A chat template that renders what tool-call data carry: the tools (as JSON), assistant turns that call a tool,
# and the tool's answers; {% generation %} marks the assistant's text and calls (the tiny model's own template
# shows none of them).
TOOLS_TEMPLATE = (
    "{% if tools %}{{ '<|system|>\n' + tools | tojson + '<|end|>\n' }}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' }}{% generation %}"
    "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}{{ 'call ' + c['function']['name'] + ' '"
    " + c['function']['arguments'] | tojson }}{% endfor %}{% else %}{{ m['content'] }}{% endif %}"
    "{{ '<|end|>' }}{% endgeneration %}{{ '\n' }}{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def tool_call_rows(n=8) -> list[dict]:
    tools = [{"type": "function", "function": {"name": "add", "description": "Add two numbers.", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}]
    return [{"messages": [
        {"role": "user", "content": f"What is {i} + {2 * i}?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "add", "arguments": {"a": i, "b": 2 * i}}}]},
        {"role": "tool", "content": str(3 * i)},
        {"role": "assistant", "content": f"{i} + {2 * i} = {3 * i}."}],
        "tools": tools, "uncertainty": 10.0 * i} for i in range(n)]


def remote_code_model(tmp_path, tiny_model_path) -> str:
    """The tiny model as a model whose class lives in its folder (auto_map), loaded with trust_remote_code."""
    import json
    import shutil

    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_path, folder)
    (folder / "configuration_remote.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass RemoteConfig(LlamaConfig):\n    model_type = 'remote'\n")
    (folder / "modeling_remote.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_remote import RemoteConfig\n\n\n"
        "class RemoteForCausalLM(LlamaForCausalLM):\n    config_class = RemoteConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="remote", architectures=["RemoteForCausalLM"],
                  auto_map={"AutoConfig": "configuration_remote.RemoteConfig",
                            "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def sft_and_ual(tmp_path, model, rows, processing_class=None, **common):
    """The same data and settings through both trainers (UAL at eps = 0)."""
    common = {"max_length": 64, **common}
    ual = UALTrainer(model=model, args=cpu_config(tmp_path / "u", smoothing_strategy="none", **common),
                     train_dataset=Dataset.from_list(rows), processing_class=processing_class)
    plain = [{k: v for k, v in r.items() if k != "uncertainty"} for r in rows]
    sft = SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path / "s"), use_cpu=True, bf16=False,
                                                 report_to="none", save_strategy="no", seed=0,
                                                 activation_checkpointing=False, **common),
                     train_dataset=Dataset.from_list(plain), processing_class=processing_class)
    return ual, sft


def test_tool_calls_are_tokenised_and_trained_as_sft_trainer_does(tmp_path, tiny_model_path, tokenizer):
    tools_tokenizer = copy.deepcopy(tokenizer)
    tools_tokenizer.chat_template = TOOLS_TEMPLATE
    rows = tool_call_rows()
    for only_assistant in (False, True):
        ual, sft = sft_and_ual(tmp_path / str(only_assistant), tiny_model_path, rows, tools_tokenizer,
                               per_device_train_batch_size=4, assistant_only_loss=only_assistant, max_length=256)
        assert ual.train_dataset["input_ids"] == sft.train_dataset["input_ids"]
        assert "call add" in tools_tokenizer.decode(ual.train_dataset[1]["input_ids"])  # the template saw them
        assert '"add"' in tools_tokenizer.decode(ual.train_dataset[1]["input_ids"])
        batch = next(iter(ual.get_train_dataloader()))
        losses, grads = loss_and_grads(ual, sft, batch)
        assert_matches_sft(losses, grads)
    smoothed = UALTrainer(model=tiny_model_path, train_dataset=Dataset.from_list(rows), processing_class=tools_tokenizer,
                          args=cpu_config(tmp_path / "eps", max_steps=1, assistant_only_loss=True, max_length=256))
    batch = next(iter(smoothed.get_train_dataloader()))
    want = {round(float(e), 5) for e in smoothed.smoothing_map([r["uncertainty"] for r in rows])}
    assert {round(float(e), 5) for e in batch[TOKEN_SMOOTHING][batch["labels"] != -100]} <= want
    smoothed.train()


def test_remote_code_model_needs_the_flag_and_then_matches_sft_trainer(tmp_path, tiny_model_path):
    model = remote_code_model(tmp_path, tiny_model_path)
    rows = rows_of("prompt_completion")
    with pytest.raises(ValueError, match="custom code") as sft_error:
        SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path / "s0"), use_cpu=True, report_to="none"),
                   train_dataset=Dataset.from_list([{k: v for k, v in r.items() if k != "uncertainty"} for r in rows]))
    with pytest.raises(ValueError, match="custom code") as ual_error:
        UALTrainer(model=model, args=cpu_config(tmp_path / "u0"), train_dataset=Dataset.from_list(rows))
    assert type(ual_error.value) is type(sft_error.value)
    ual, sft = sft_and_ual(tmp_path, model, rows, trust_remote_code=True, per_device_train_batch_size=4)
    assert type(ual.model).__name__ == type(sft.model).__name__ == "RemoteForCausalLM"
    losses, grads = loss_and_grads(ual, sft, next(iter(ual.get_train_dataloader())))
    assert_matches_sft(losses, grads)
    trained = UALTrainer(model=model, args=cpu_config(tmp_path / "c", trust_remote_code=True, max_steps=1,
                                                      smoothing_strategy="constant", smoothing_mean=0.1),
                         train_dataset=Dataset.from_list(rows))
    trained.train()
    assert trained.state.log_history[-1]["train_loss"] > 0
