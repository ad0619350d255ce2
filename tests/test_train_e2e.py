"""The real entry point, as users start it: the tiny recipe in one process and under `accelerate launch` (DDP)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def run(cmd, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = tmp_path / "log.txt"
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout + proc.stderr


def logged_losses(out_dir):
    state = json.loads((out_dir / "trainer_state.json").read_text())
    return state, [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_tiny_recipe_trains_end_to_end_and_its_loss_falls(tmp_path):
    out = tmp_path / "tiny"
    log = run([sys.executable, "-m", "ual.train", "recipes/tiny.yaml", "--output_dir", str(out)], tmp_path)
    state, losses = logged_losses(out)
    assert state["global_step"] == 100  # 400 samples / batch 8 * 2 epochs
    assert len(losses) >= 10 and losses[-1] < losses[0] - 0.5, losses
    assert "UAL smoothing (uncertainty): n=400" in log and "mean=0.1000" in log
    saved = json.loads((out / "ual_smoothing.json").read_text())
    assert set(saved["statistics"]["per_source"]) == {"gsm8k", "alpaca"}
    assert saved["statistics"]["per_source"]["gsm8k"]["smoothing_mean"] < saved["statistics"]["per_source"]["alpaca"]["smoothing_mean"]
    assert any(p.name.startswith("checkpoint-") for p in out.iterdir())
    assert (out / "train_results.json").exists()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]


def test_ual_train_prints_and_runs_the_accelerate_command(tmp_path):
    out = tmp_path / "launched"
    log = run([sys.executable, "-m", "ual.cli", "train", "recipes/tiny.yaml", "--max_steps", "3",
               "--save_strategy", "no", "--output_dir", str(out)], tmp_path)
    assert log.splitlines()[0] == f"accelerate launch -m ual.train recipes/tiny.yaml --max_steps 3 --save_strategy no --output_dir {out}"
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
