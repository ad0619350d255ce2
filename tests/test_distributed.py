"""Real multi-process runs through `accelerate launch` on the CPU (DDP, ZeRO-2, ZeRO-3 with the lm_head gathered by
the loss head, FSDP2 with the lm_head's DTensor made whole), LoRA/QLoRA adapters, and resume after a kill.

The tiny recipe, 8 optimizer steps. A two-process run (8 per device) sees the same global batches as one
process with 16 per device, and TRL's loss is normalised by the global token count, so their logged losses
must agree up to float32 reduction order: tolerance 1e-3 relative.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO
from ual.launch import deepspeed_json

pytestmark = pytest.mark.slow
STEPS = ["--max_steps", "8", "--logging_steps", "2", "--save_strategy", "no"]
LOSS_RTOL = 1e-3


def env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "CUDA_VISIBLE_DEVICES": ""}


def run(cmd, log_path):
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
    log_path.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout + proc.stderr


def losses(out_dir):
    state = json.loads((out_dir / "trainer_state.json").read_text())
    return state["global_step"], [e["loss"] for e in state["log_history"] if "loss" in e]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    run([sys.executable, "-m", "ual.train", "recipes/tiny.yaml", "--output_dir", str(out),
         "--per_device_train_batch_size", "16", *STEPS], out.parent / "log.txt")
    return losses(out)


def cpu_config(name, tmp_path):
    """The shipped accelerate config, switched to 2 CPU processes (what changes on a GPU cluster: use_cpu)."""
    config = yaml.safe_load((REPO / "accelerate_configs" / f"{name}.yaml").read_text())
    config.update(use_cpu=True, num_processes=2)
    json_file = deepspeed_json(config, REPO / "accelerate_configs" / f"{name}.yaml")  # as `ual train` resolves it
    if json_file is not None:
        config["deepspeed_config"]["deepspeed_config_file"] = str(json_file)
    if "mixed_precision" in config:
        config["mixed_precision"] = "no"  # bf16 autocast is a GPU setting; the tiny model trains in fp32
    path = tmp_path / f"{name}-cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("config", ["cpu_ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp2", "deepspeed_zero3+compile"])
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, single_process, config):
    """+compile: the torch.compile'd loss head (loss_compile, the CUDA default) on the ZeRO-3-gathered lm_head."""
    out = tmp_path / "out"
    config, _, compile_head = config.partition("+")
    cfg = REPO / "accelerate_configs" / "cpu_ddp.yaml" if config == "cpu_ddp" else cpu_config(config, tmp_path)
    log = run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), "-m", "ual.train",
         "recipes/tiny.yaml", "--output_dir", str(out), "--per_device_train_batch_size", "8", *STEPS,
         *(["--loss_compile", "true"] if compile_head else [])],
        tmp_path / "log.txt",
    )
    assert ("UAL loss head: chunk automatic tokens, compiled" in log) == bool(compile_head)
    steps, got = losses(out)
    ref_steps, want = single_process
    assert steps == ref_steps == 8
    assert got == pytest.approx(want, rel=LOSS_RTOL), f"{config}: {got} vs single process {want}"
    # the mapping was fitted before sharding and checked equal across ranks by an all-gather
    assert "smoothing mapping identical on all 2 rank(s)" in log
    assert json.loads((out / "ual_smoothing.json").read_text())["settings"]["smoothing_strategy"] == "uncertainty"


def test_sample_normalisation_two_processes_match_one_with_packing(tmp_path):
    """loss_normalization: sample counts samples across processes as TRL counts tokens: 2 x 8 packed sequences,
    padding-free, give the losses of 1 x 16."""
    flags = ["recipes/tiny.yaml", *STEPS, "--loss_normalization", "sample", "--packing", "true", "--max_length", "128"]
    one, two = tmp_path / "one", tmp_path / "two"
    log = run([sys.executable, "-m", "ual.train", *flags, "--output_dir", str(one), "--per_device_train_batch_size",
               "16"], tmp_path / "one.txt")
    assert "mean 0.1000 per sample" in log  # the mapping's mean is what 'sample' applies (no row was dropped)
    run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs" /
         "cpu_ddp.yaml"), "-m", "ual.train", *flags, "--output_dir", str(two), "--per_device_train_batch_size", "8"],
        tmp_path / "two.txt")
    (steps_one, want), (steps_two, got) = losses(one), losses(two)
    assert steps_one == steps_two == 8
    assert got == pytest.approx(want, rel=LOSS_RTOL), f"{got} vs single process {want}"


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_lora_and_qlora_save_an_adapter_that_reloads_and_generates(tmp_path, quantized):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ual.train import main as train_main

    overlay = {"use_peft": True, "lora_r": 8, "lora_alpha": 16, "lora_target_modules": ["q_proj", "v_proj"]}
    if quantized:
        overlay.update(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    (tmp_path / "peft.yaml").write_text(yaml.safe_dump(overlay))
    out = tmp_path / "out"
    trainer = train_main([str(REPO / "recipes/tiny.yaml"), str(tmp_path / "peft.yaml"), "--output_dir", str(out),
                          "--model_name_or_path", str(REPO / "models/tiny-llama"), *STEPS])
    if quantized:
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules()), "base must be 4-bit"
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(REPO / "models/tiny-llama")
    model = PeftModel.from_pretrained(base, out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]


def test_resume_after_a_kill_ends_with_the_uninterrupted_loss(tmp_path, capsys, monkeypatch):
    args = ["recipes/tiny.yaml", "--max_steps", "12", "--logging_steps", "1", "--save_strategy", "steps",
            "--save_steps", "4", "--save_total_limit", "5"]
    straight = tmp_path / "straight"
    run([sys.executable, "-m", "ual.train", *args, "--output_dir", str(straight)], tmp_path / "straight.txt")

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ual.train", *args, "--output_dir", str(killed)], cwd=REPO,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the run never wrote its first checkpoint"
    assert not (killed / "trainer_state.json").exists(), "killed too late: the run had finished"
    assert (killed / "checkpoint-4" / "ual_smoothing.json").exists(), "smoothing settings travel with checkpoints"

    resume = ["--output_dir", str(killed), "--resume_from_checkpoint", str(killed / "checkpoint-4")]
    run([sys.executable, "-m", "ual.train", *args, *resume], tmp_path / "resumed.txt")
    steps, resumed = losses(killed)
    _, uninterrupted = losses(straight)
    assert steps == 12
    assert resumed[-4:] == pytest.approx(uninterrupted[-4:], rel=1e-4)

    # a checkpoint trained with other smoothing settings is refused (in-process: the same entry point, no restart)
    from ual.train import cli

    monkeypatch.chdir(REPO)
    assert cli([*args, *resume, "--smoothing_mean", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "smoothing_mean" in err
