"""``ual eval gsm8k|metamath|alpacaeval`` end to end on the tiny offline model, and every bad input."""

import json

import pytest
import torch

from conftest import REPO, SAMPLE_DATA, cpu_config, write_jsonl
from ual.eval.alpacaeval import validate_model_outputs
from ual.eval.cli import main

FAST = ["--max-new-tokens", "12", "--batch-size", "4", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, tiny_model_path):
    """A LoRA adapter trained for 8 steps by UALTrainer, saved as `ual train` saves it."""
    from datasets import Dataset
    from peft import LoraConfig

    from ual.formats import convert
    from ual.trainer import UALTrainer

    tmp = tmp_path_factory.mktemp("lora")
    rows = [json.loads(line) for line in (SAMPLE_DATA / "gsm8k_train_200.jsonl").read_text().splitlines()[:16]]
    ds = Dataset.from_list([{**convert(r, "gsm8k"), "uncertainty": r["uncertainty"]} for r in rows])
    out = tmp / "adapter"
    trainer = UALTrainer(
        model=tiny_model_path, args=cpu_config(tmp, output_dir=str(out), max_steps=8, learning_rate=5e-3),
        train_dataset=ds, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    trainer.save_model(str(out))
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gsm8k_end_to_end(tmp_path, tiny_model_path):
    out = tmp_path / "gsm8k"
    assert main(["eval", "gsm8k", "--model", tiny_model_path, "--limit", "4", "--output-dir", str(out), *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "samples.jsonl", "settings.json"]
    results = json.loads((out / "results.json").read_text())
    samples = read_jsonl(out / "samples.jsonl")
    settings = json.loads((out / "settings.json").read_text())
    assert results["task"] == "gsm8k" and results["metrics"]["n"] == 4 == len(samples)
    assert [s["gold"] for s in samples] == ["18", "3", "70000", "540"]
    for s in samples:
        assert {"question", "gold", "output", "extracted", "correct", "finish_reason"} <= set(s)
    m = results["metrics"]
    assert m["accuracy"] == sum(s["correct"] for s in samples) / 4
    assert 0 <= m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1] <= 1
    assert settings["generation"]["decoding"] == "greedy" and settings["generation"]["max_new_tokens"] == 12
    assert settings["num_fewshot"] == 0 and settings["limit"] == 4 and settings["backend"] == "transformers"
    assert settings["data"]["path"].endswith("data/eval/gsm8k_test.jsonl") and len(settings["data"]["sha256"]) == 64
    assert settings["first_prompt"].startswith("<|user|>\nJanet")  # the model's own chat template


def test_gsm8k_fewshot_with_a_chat_template_file(tmp_path, tiny_model_path):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant:{% endif %}")
    out = tmp_path / "fewshot"
    assert main(["eval", "gsm8k", "--model", tiny_model_path, "--limit", "2", "--num-fewshot", "2",
                 "--chat-template", str(template), "--output-dir", str(out), *FAST]) == 0
    settings = json.loads((out / "settings.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert results["name"] == "gsm8k-2shot" and settings["num_fewshot"] == 2
    prompt = settings["first_prompt"]
    assert prompt.startswith("user: Natalia sold clips") and "<<" not in prompt  # calculator notes stripped
    assert "#### 72" in prompt and prompt.endswith("assistant:")


def test_metamath_end_to_end(tmp_path, tiny_model_path):
    data = write_jsonl(tmp_path / "metamath_heldout.jsonl", [
        {"query": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "response": "We add: 2/4 + 1/4 = 3/4. The answer is: \\frac{3}{4}"},
        {"query": "Solve x + 3 = 10.", "response": "x = 10 - 3 = 7.\nThe answer is: 7"},
        {"query": "What is 1,000 + 234?", "response": "The sum is 1,234. The answer is: 1,234"},
        {"query": "What is 5 - 9?", "response": "The answer is: -4"},
        {"query": "unused", "response": "The answer is: 1"},
    ])
    out = tmp_path / "metamath"
    assert main(["eval", "metamath", "--model", tiny_model_path, "--data", str(data), "--limit", "4",
                 "--output-dir", str(out), *FAST]) == 0
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["gold"] for s in samples] == ["\\frac{3}{4}", "7", "1,234", "-4"]
    assert json.loads((out / "results.json").read_text())["metrics"]["gold_unreadable"] == 0


def test_alpacaeval_end_to_end_writes_alpaca_eval_model_outputs(tmp_path, tiny_model_path):
    out = tmp_path / "alpacaeval"
    assert main(["eval", "alpacaeval", "--model", tiny_model_path, "--limit", "4", "--paper-sampling",
                 "--generator-name", "tiny-ual", "--output-dir", str(out), *FAST]) == 0
    records = json.loads((out / "model_outputs.json").read_text())
    validate_model_outputs(records)
    assert isinstance(records, list) and len(records) == 4
    for r in records:
        assert set(r) == {"instruction", "output", "generator", "dataset"}
        assert all(isinstance(v, str) for v in r.values()) and r["generator"] == "tiny-ual"
    reference = json.loads((REPO / "data/eval/alpaca_eval.json").read_text())
    assert [r["instruction"] for r in records] == [r["instruction"] for r in reference[:4]]
    assert [r["dataset"] for r in records] == [r["dataset"] for r in reference[:4]]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["generation"]["temperature"] == 0.8 and settings["generation"]["top_k"] == 200
    assert settings["generation"]["decoding"] == "sampling" and settings["generator"] == "tiny-ual"
    assert (out / "results.json").exists() and len(read_jsonl(out / "samples.jsonl")) == 4


def test_shipped_alpacaeval_set_has_805_instructions():
    rows = json.loads((REPO / "data/eval/alpaca_eval.json").read_text())
    assert len(rows) == 805 and len({r["instruction"] for r in rows}) == 805
    assert (REPO / "data/eval/LICENSE-ALPACA-EVAL-CC-BY-NC-4.0.txt").exists()
    assert (REPO / "data/eval/LICENSE-GSM8K-MIT.txt").exists()


def test_adapter_eval_defaults_to_the_adapter_directory(lora_adapter, tiny_model_path):
    assert main(["eval", "gsm8k", "--model", tiny_model_path, "--adapter", str(lora_adapter), "--limit", "2", *FAST]) == 0
    out = lora_adapter / "eval" / "gsm8k"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model"]["adapter"] == str(lora_adapter.resolve())
    assert json.loads((out / "results.json").read_text())["metrics"]["n"] == 2


# --- bad input: a clear error naming the culprit, exit code 2, nothing written -----------------------------


def run_bad(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def test_missing_model_path(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    err = run_bad(capsys, ["eval", "gsm8k", "--model", missing, "--limit", "2", "--output-dir", str(tmp_path / "o")])
    assert missing in err and "no such directory" in err
    assert not (tmp_path / "o").exists()


def test_an_adapter_folder_alone_is_evaluated_on_the_base_it_names(lora_adapter, tmp_path, tiny_model_path):
    alone, explicit = tmp_path / "alone", tmp_path / "explicit"
    assert main(["eval", "gsm8k", "--model", str(lora_adapter), "--limit", "2", "--output-dir", str(alone), *FAST]) == 0
    assert main(["eval", "gsm8k", "--model", tiny_model_path, "--adapter", str(lora_adapter), "--limit", "2",
                 "--output-dir", str(explicit), *FAST]) == 0
    settings = json.loads((alone / "settings.json").read_text())
    assert settings["model"] == json.loads((explicit / "settings.json").read_text())["model"]  # base and adapter
    outputs = [[s["output"] for s in read_jsonl(d / "samples.jsonl")] for d in (alone, explicit)]
    assert outputs[0] == outputs[1]  # greedy: the same weights give the same answers


def test_an_adapter_naming_no_base_is_explained(lora_adapter, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(lora_adapter, broken)
    cfg = json.loads((broken / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (broken / "adapter_config.json").write_text(json.dumps(cfg))
    err = run_bad(capsys, ["eval", "gsm8k", "--model", str(broken), "--output-dir", str(tmp_path / "o")])
    assert "names no base model" in err and "--adapter" in err


def test_adapter_of_another_base_model(tmp_path, tiny_model_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    adapter = tmp_path / "other-adapter"
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    out = tmp_path / "o"
    err = run_bad(capsys, ["eval", "gsm8k", "--model", tiny_model_path, "--adapter", str(adapter), "--limit", "2",
                           "--output-dir", str(out), *FAST])
    assert str(adapter) in err and "does not fit" in err and tiny_model_path in err and "size mismatch" in err
    assert not out.exists()


def test_adapter_directory_without_adapter_config(tmp_path, tiny_model_path, capsys):
    (tmp_path / "empty").mkdir()
    err = run_bad(capsys, ["eval", "gsm8k", "--model", tiny_model_path, "--adapter", str(tmp_path / "empty")])
    assert "adapter_config.json" in err


def test_eval_file_with_a_missing_column(tmp_path, tiny_model_path, capsys):
    data = write_jsonl(tmp_path / "mm.jsonl", [{"query": "1+1?", "response": "The answer is: 2"}, {"query": "2+2?"}])
    err = run_bad(capsys, ["eval", "metamath", "--model", tiny_model_path, "--data", str(data), "--output-dir", str(tmp_path / "o")])
    assert str(data) in err and "row 1" in err and "'response'" in err
    data = write_jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "solution": "2"}])
    err = run_bad(capsys, ["eval", "gsm8k", "--model", tiny_model_path, "--data", str(data)])
    assert "'answer'" in err and str(data) in err


def test_gold_without_a_final_answer(tmp_path, tiny_model_path, capsys):
    data = write_jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": "#### 2"}, {"question": "q", "answer": "It is 2."}])
    err = run_bad(capsys, ["eval", "gsm8k", "--model", tiny_model_path, "--data", str(data)])
    assert "row 1" in err and "####" in err


def test_missing_eval_file(tmp_path, tiny_model_path, capsys):
    err = run_bad(capsys, ["eval", "metamath", "--model", tiny_model_path, "--data", str(tmp_path / "nope.jsonl")])
    assert "nope.jsonl" in err and "no such file" in err


@pytest.mark.parametrize("flag", ["--limit", "--batch-size", "--max-new-tokens"])
def test_zero_is_refused(flag, tiny_model_path, capsys):
    err = run_bad(capsys, ["eval", "gsm8k", "--model", tiny_model_path, flag, "0"])
    assert flag in err and "positive" in err


def test_existing_output_directory_needs_overwrite(tmp_path, tiny_model_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "old.txt").write_text("an earlier result")
    err = run_bad(capsys, ["eval", "gsm8k", "--model", tiny_model_path, "--limit", "1", "--output-dir", str(out), *FAST])
    assert str(out) in err and "--overwrite" in err
    assert (out / "old.txt").exists()
    assert main(["eval", "gsm8k", "--model", tiny_model_path, "--limit", "1", "--output-dir", str(out), "--overwrite", *FAST]) == 0
    assert not (out / "old.txt").exists() and (out / "results.json").exists()


def test_a_failure_mid_run_leaves_nothing_that_looks_like_a_result(tmp_path, tiny_model_path, capsys):
    """The model is loaded when the chat template fails to render: no output directory may appear."""
    template = tmp_path / "broken.jinja"
    template.write_text("{{ raise_exception('this template refuses every prompt') }}")
    out = tmp_path / "results" / "gsm8k"
    err = run_bad(capsys, ["eval", "gsm8k", "--model", tiny_model_path, "--limit", "2", "--chat-template", str(template),
                           "--output-dir", str(out), *FAST])
    assert "refuses every prompt" in err
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])


def test_output_directory_appears_only_complete(tmp_path):
    """AtomicDir: an error while writing removes the partial directory and keeps an old result intact."""
    from ual.eval.outputs import AtomicDir

    out = tmp_path / "res"
    with pytest.raises(RuntimeError):
        with AtomicDir(out, overwrite=False) as tmp:
            (tmp / "results.json").write_text("{}")
            raise RuntimeError("crash while writing")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "results.json").write_text("old")
    with pytest.raises(RuntimeError):
        with AtomicDir(out, overwrite=True) as tmp:
            (tmp / "results.json").write_text("new, half")
            raise RuntimeError("crash while writing")
    assert (out / "results.json").read_text() == "old" and list(tmp_path.iterdir()) == [out]
    with AtomicDir(out, overwrite=True) as tmp:
        (tmp / "results.json").write_text("new")
    assert (out / "results.json").read_text() == "new" and list(tmp_path.iterdir()) == [out]


def test_model_without_chat_template_asks_for_one(tmp_path, tiny_model_path, capsys):
    import shutil

    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_path, model)
    (model / "chat_template.jinja").unlink()
    err = run_bad(capsys, ["eval", "gsm8k", "--model", str(model), "--limit", "1", "--output-dir", str(tmp_path / "o"), *FAST])
    assert "--chat-template" in err and not (tmp_path / "o").exists()


def test_metamath_needs_data(tiny_model_path, capsys):
    err = run_bad(capsys, ["eval", "metamath", "--model", tiny_model_path])
    assert "--data" in err


def test_hub_id_that_cannot_be_reached_offline(tmp_path, capsys):
    err = run_bad(capsys, ["eval", "gsm8k", "--model", "no-such-org/no-such-model", "--limit", "1",
                           "--output-dir", str(tmp_path / "o")])
    assert "'no-such-org/no-such-model'" in err and "hub id" in err


def test_generation_stops_at_eos_or_a_stop_string_and_is_batch_independent(tiny_model_path):
    from ual.eval.generate import GenerationSettings, generate_transformers, render_prompts
    from ual.eval.models import ModelSpec, load_model

    model, tokenizer = load_model(ModelSpec(tiny_model_path))
    prompts = render_prompts(tokenizer, [[{"role": "user", "content": q}] for q in ("What is 2+2?", "Name a colour", "Hi")])
    free = generate_transformers(model, tokenizer, prompts, GenerationSettings(max_new_tokens=16, batch_size=3), progress=False)
    one_by_one = generate_transformers(model, tokenizer, prompts, GenerationSettings(max_new_tokens=16, batch_size=1), progress=False)
    assert [g.text for g in free] == [g.text for g in one_by_one]  # left padding does not change greedy outputs
    assert all(g.finish_reason == "length" and g.num_tokens == 16 for g in free)
    stop = free[0].text[4:7]
    cut = generate_transformers(model, tokenizer, prompts[:1], GenerationSettings(max_new_tokens=16, stop_strings=[stop]), progress=False)[0]
    assert cut.finish_reason == "stop" and cut.text == free[0].text[: free[0].text.find(stop)].strip()
    # make the first generated token the EOS: generation ends there, and the EOS is not in the text
    ids = torch.tensor([tokenizer(prompts[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        first = int(model(input_ids=ids).logits[0, -1].argmax())
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first]
    ended = generate_transformers(model, tokenizer, prompts[:1], GenerationSettings(max_new_tokens=16), progress=False)[0]
    assert ended.finish_reason == "eos" and ended.num_tokens == 0 and ended.text == ""


def test_help_and_backend_choice(capsys):
    from ual.errors import UsageError
    from ual.eval.generate import choose_backend, vllm_usable

    assert main(["--help"]) == 0 and main(["eval", "gsm8k", "--help"]) == 0
    assert "--paper-sampling" in capsys.readouterr().out
    assert main(["eval"]) == 2
    if not vllm_usable():  # the CPU machines: auto falls back, an explicit request is refused
        assert choose_backend("auto") == "transformers"
        with pytest.raises(UsageError, match="vllm"):
            choose_backend("vllm")


def test_adapter_recorded_for_a_differently_named_base_loads_with_a_warning(lora_adapter, tmp_path, tiny_model_path, capsys):
    """Same shapes, other recorded base name (e.g. a hub id vs a local snapshot): usable, but said loudly."""
    import shutil

    adapter = tmp_path / "renamed"
    shutil.copytree(lora_adapter, adapter, ignore=shutil.ignore_patterns("eval"))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "meta-llama/Llama-2-7b-hf"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    assert main(["eval", "gsm8k", "--model", tiny_model_path, "--adapter", str(adapter), "--limit", "1",
                 "--output-dir", str(tmp_path / "o"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "meta-llama/Llama-2-7b-hf" in err and str(adapter) in err
