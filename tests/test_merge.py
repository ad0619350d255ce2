"""``ual merge``: PEFT's merge of a LoRA adapter trained by UALTrainer; the merged model's logits equal the base
plus adapter, and the run's tokenizer, chat template, ual_smoothing.json and card travel with it."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO
from ual.cli import main as ual
from ual.train import main as train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    overlay = out.parent / "lora.yaml"
    overlay.write_text("use_peft: true\nlora_r: 4\nlora_alpha: 8\nlora_target_modules: [q_proj, v_proj]\n")
    train([str(REPO / "recipes/tiny.yaml"), str(overlay), "--output_dir", str(out), "--max_steps", "3",
           "--learning_rate", "0.01", "--model_name_or_path", str(REPO / "models/tiny-llama")])
    return out


def test_merged_logits_equal_base_plus_adapter(adapter, tmp_path, capsys):
    from peft import PeftModel

    out = tmp_path / "merged"
    assert ual(["merge", str(adapter), "--output", str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "ual_smoothing.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "ual_smoothing.json").read_text()) == json.loads((adapter / "ual_smoothing.json").read_text())
    assert "Merged with `ual merge`" in (out / "README.md").read_text()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(adapter).chat_template
    ids = tok("Natalia sold clips to 48 of her friends", return_tensors="pt")["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(REPO / "models/tiny-llama")
    plain = AutoModelForCausalLM.from_pretrained(REPO / "models/tiny-llama").eval()
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        got, want, before = merged(ids).logits, with_adapter(ids).logits, plain(ids).logits
    assert (want - before).abs().max() > 1e-4, "the adapter must change the logits for this test to mean anything"
    # float32: W + B A folded in once vs applied as a separate product: rounding of about 1e-7 of the logits' size
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_merge_refuses_what_it_cannot_do(adapter, tmp_path, capsys):
    assert ual(["merge", str(REPO / "models/tiny-llama"), "--output", str(tmp_path / "o")]) == 2
    assert "not a PEFT adapter folder" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert ual(["merge", str(adapter), "--output", str(tmp_path / "taken")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_quantised_base_is_refused(adapter, tmp_path, capsys):
    import shutil

    base = tmp_path / "base-4bit"
    shutil.copytree(REPO / "models/tiny-llama", base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    assert ual(["merge", str(moved), "--output", str(tmp_path / "o")]) == 2
    assert "stored quantised" in capsys.readouterr().err and not (tmp_path / "o").exists()
