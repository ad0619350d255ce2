"""Training never destroys a finished run, resumes only from complete checkpoints, stops every rank it
launched, writes files the user's group can read, and fails in seconds on a model it cannot reach.

Fast tests call the real entry point in-process (an empty model folder proves the checks come first);
the end-to-end tests (marked slow) run ``python -m ual.train`` and ``ual train`` as a user would.
"""

import hashlib
import http.server
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, cpu_config, write_jsonl
from ual.errors import UsageError
from ual.recipe import load_recipe
from ual.run_folder import checkpoint_problems, resolve_resume
from ual.train import cli, preflight

EMPTY_MODEL = "empty-model"


def env(**extra):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


def recipe(tmp_path, **extra):
    (tmp_path / EMPTY_MODEL).mkdir(exist_ok=True)
    rows = [{"question": f"q{i}", "answer": f"{i}", "uncertainty": 10.0 + i} for i in range(8)]
    data = write_jsonl(tmp_path / "g.jsonl", rows)
    body = {"model_name_or_path": str(tmp_path / EMPTY_MODEL), "output_dir": str(tmp_path / "out"), "use_cpu": True,
            "bf16": False, "report_to": "none", "datasets": [{"path": str(data), "format": "gsm8k"}], **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "examples/s" not in line]
    assert len(lines) == 1 and lines[0].startswith("ual train: error: "), lines
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with the hash of its bytes: equal snapshots, untouched folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the default output_dir of an overlay stack -------------------------------------------------------


@pytest.mark.parametrize("stack, expected", [
    (["tiny.yaml"], "outputs/tiny"),
    (["tiny.yaml", "baselines/sft.yaml"], "outputs/tiny+sft"),
    (["tiny.yaml", "baselines/ls.yaml", "variants/qlora.yaml"], "outputs/tiny+ls+qlora"),
    (["mixed.yaml"], "outputs/mixed"),
    (["mixed.yaml", "baselines/sft.yaml", "variants/qlora.yaml"], "outputs/mixed+sft+qlora"),
])
def test_an_overlay_never_lands_in_the_base_recipes_output_dir(stack, expected):
    assert load_recipe([REPO / "recipes" / name for name in stack]).config["output_dir"] == expected


def test_an_overlay_that_sets_output_dir_is_followed_by_later_overlays(tmp_path):
    (tmp_path / "a.yaml").write_text("learning_rate: 1.0e-4\n")
    (tmp_path / "b.yaml").write_text("output_dir: runs/b\n")
    (tmp_path / "c.yaml").write_text("seed: 3\n")
    assert load_recipe([tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"]).config["output_dir"] == "runs/b+c"


# --- a folder that holds a run -------------------------------------------------------------------------


@pytest.mark.parametrize("marker", ["model.safetensors", "trainer_state.json", "checkpoint-3/", "ual_smoothing.json",
                                    "eval/"])
def test_a_folder_holding_a_run_is_refused_before_the_model_loads(tmp_path, capsys, marker):
    out = tmp_path / "out"
    out.mkdir()
    (out / marker.rstrip("/")).mkdir() if marker.endswith("/") else (out / marker).write_text("{}")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert cli([recipe(tmp_path)]) == 2
    line = error_line(capsys)
    assert f"output_dir {out} already holds a run ({marker}" in line
    assert "--resume_from_checkpoint true" in line and "--overwrite_output_dir true" in line
    assert snapshot(out) == before


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "out").write_text("my notes")
    assert cli([recipe(tmp_path)]) == 2
    assert f"output_dir {tmp_path / 'out'} is a file, not a folder" in error_line(capsys)
    assert (tmp_path / "out").read_text() == "my notes"


def test_a_folder_with_only_unrelated_files_is_not_a_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    run = preflight([recipe(tmp_path)])
    assert run.resume is None and run.training_args.output_dir == str(out)


@pytest.mark.parametrize("flags, message", [
    (["--resume_from_checkpoint", "NOPE"], "resume_from_checkpoint NOPE: no such folder"),
    (["--resume_from_checkpoint", "true"], "output_dir OUT does not exist, so there is no checkpoint to resume from"),
])
def test_a_resume_that_cannot_start_fails_before_the_model_loads_and_creates_nothing(tmp_path, capsys, flags, message):
    flags = [f.replace("NOPE", str(tmp_path / "nope")) for f in flags]
    assert cli([recipe(tmp_path), *flags]) == 2
    assert message.replace("NOPE", str(tmp_path / "nope")).replace("OUT", str(tmp_path / "out")) in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_resume_true_with_no_checkpoint_and_resume_with_overwrite_are_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert cli([recipe(tmp_path), "--resume_from_checkpoint", "true"]) == 2
    assert "holds no checkpoint-N folder to resume from" in error_line(capsys)
    assert cli([recipe(tmp_path), "--resume_from_checkpoint", "true", "--overwrite_output_dir", "true"]) == 2
    assert "deletes the checkpoint the resume needs" in error_line(capsys)


# --- complete checkpoints -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real 8-step run of the tiny recipe with checkpoints at steps 4 and 8."""
    out = tmp_path_factory.mktemp("real") / "run"
    proc = subprocess.run([sys.executable, "-m", "ual.train", "recipes/tiny.yaml", "--output_dir", str(out),
                           "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--save_total_limit",
                           "3", "--logging_steps", "1"], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def copy_run(real_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(real_run, out)
    return out


def cut(path: Path, keep: float = 0.5) -> None:
    """What kill -9 leaves of a file being written: its first part."""
    os.truncate(path, int(path.stat().st_size * keep))


@pytest.mark.slow
@pytest.mark.parametrize("damage, problem", [
    (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
    (lambda c: cut(c / "trainer_state.json"), "trainer_state.json is not valid JSON"),
    (lambda c: cut(c / "model.safetensors", 0.9), "model.safetensors is truncated"),
    (lambda c: cut(c / "optimizer.pt"), "optimizer.pt is truncated"),
    (lambda c: cut(c / "rng_state.pth", 0.99), "rng_state.pth is truncated"),
    (lambda c: (c / "model.safetensors").unlink(), "no model weights"),
])
def test_resume_true_skips_an_incomplete_newest_checkpoint_and_names_it(real_run, tmp_path, caplog, damage, problem):
    out = copy_run(real_run, tmp_path)
    assert checkpoint_problems(out / "checkpoint-8") == [] and checkpoint_problems(out / "checkpoint-4") == []
    damage(out / "checkpoint-8")
    with caplog.at_level(logging.WARNING, logger="ual"):
        resume = resolve_resume(True, str(out))
    assert resume.checkpoint == str(out / "checkpoint-4") and resume.step == 4
    assert f"skipping incomplete checkpoint {out / 'checkpoint-8'}: " in caplog.text and problem in caplog.text
    with pytest.raises(UsageError, match=rf"checkpoint-8 is an incomplete checkpoint \(.*{problem}.*\); the newest "
                                         rf"complete one beside it is {out / 'checkpoint-4'}"):
        resolve_resume(str(out / "checkpoint-8"), str(out))


@pytest.mark.slow
def test_a_foreign_and_an_incomplete_checkpoint_get_different_accurate_messages(real_run, tmp_path, capsys,
                                                                                 monkeypatch, one_thread):
    out = copy_run(real_run, tmp_path)
    (out / "checkpoint-4" / "ual_smoothing.json").unlink()  # a complete checkpoint of another trainer
    (out / "checkpoint-8" / "trainer_state.json").unlink()  # an interrupted save
    monkeypatch.chdir(REPO)
    args = ["recipes/tiny.yaml", "--output_dir", str(out), "--max_steps", "10", "--resume_from_checkpoint"]
    assert cli([*args, str(out / "checkpoint-4")]) == 2  # found when the mapping is fitted: after the [ual] log
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and ("is a complete Trainer checkpoint but has no ual_smoothing.json, so it was not "
                                 "written by UALTrainer") in errors[0]
    assert cli([*args, str(out / "checkpoint-8")]) == 2
    line = error_line(capsys)
    assert "is an incomplete checkpoint (no trainer_state.json" in line and "UALTrainer" not in line


@pytest.mark.slow
def test_rerun_refused_overwrite_replaces_and_resume_continues_from_the_last_complete_checkpoint(
        real_run, tmp_path, capsys, caplog, monkeypatch, one_thread):
    """The way it was found: a second command on a finished run's folder, then a kill while saving."""
    monkeypatch.chdir(REPO)
    out = copy_run(real_run, tmp_path)
    (out / "eval" / "gsm8k").mkdir(parents=True)
    (out / "eval" / "gsm8k" / "results.json").write_text('{"accuracy": 0.5}')
    (out / "notes.txt").write_text("mine")
    base = ["recipes/tiny.yaml", "--save_strategy", "steps", "--save_steps", "4", "--save_total_limit", "3",
            "--logging_steps", "1"]
    before = snapshot(out)
    assert cli([*base, "--output_dir", str(out), "--max_steps", "8"]) == 2
    assert "already holds a run" in error_line(capsys) and snapshot(out) == before

    # kill -9 while checkpoint-12 is written leaves its weights cut short and no trainer_state.json yet
    resumed = copy_run(real_run, tmp_path / "r")
    (resumed / "checkpoint-12").mkdir()
    for name in ("model.safetensors", "optimizer.pt"):
        shutil.copy(resumed / "checkpoint-8" / name, resumed / "checkpoint-12" / name)
    cut(resumed / "checkpoint-12" / "optimizer.pt")
    with caplog.at_level(logging.INFO, logger="ual"):
        assert cli([*base, "--output_dir", str(resumed), "--max_steps", "12", "--resume_from_checkpoint", "true"]) == 0
    assert f"skipping incomplete checkpoint {resumed / 'checkpoint-12'}: no trainer_state.json" in caplog.text
    assert f"resuming from {resumed / 'checkpoint-8'} (global step 8)" in caplog.text
    assert "is the mean over steps 9-12, the steps run since the resume at step 8" in caplog.text
    results = json.loads((resumed / "train_results.json").read_text())
    assert results["resumed_from_step"] == 8 and results["train_loss_first_step"] == 9
    assert results["train_loss_last_step"] == 12

    # overwriting removes the old run first: no stale eval survives, the user's own file does
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ual"):
        assert cli([*base, "--output_dir", str(out), "--max_steps", "4", "--overwrite_output_dir", "true"]) == 0
    assert not (out / "eval").exists() and not (out / "checkpoint-8").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert "kept notes.txt" in caplog.text


# --- files the user's group can read ---------------------------------------------------------------------


def test_saved_model_files_follow_the_umask(tmp_path, tiny_model_path, one_thread):
    from datasets import Dataset

    from ual.trainer import UALTrainer

    rows = [{"prompt": f"p{i}", "completion": f" c{i}", "uncertainty": 10.0 * i} for i in range(4)]
    trainer = UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path), train_dataset=Dataset.from_list(rows))
    for mask, mode in ((0o022, 0o644), (0o027, 0o640)):
        previous = os.umask(mask)
        try:
            trainer.save_model(str(tmp_path / f"saved-{mask:o}"))
        finally:
            os.umask(previous)
        for name in ("model.safetensors", "ual_smoothing.json", "config.json"):
            assert (tmp_path / f"saved-{mask:o}" / name).stat().st_mode & 0o777 == mode, name


def test_eval_and_report_folders_follow_the_umask(tmp_path):
    from ual.eval.outputs import AtomicDir

    previous = os.umask(0o027)
    try:
        with AtomicDir(tmp_path / "eval" / "gsm8k", overwrite=False) as tmp:  # what ual eval and ual report use
            (tmp / "results.json").write_text("{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "eval" / "gsm8k").stat().st_mode & 0o777 == 0o750, "mkdtemp's 0700 would hide it"
    assert (tmp_path / "eval" / "gsm8k" / "results.json").stat().st_mode & 0o777 == 0o640


# --- a hub model that cannot be reached --------------------------------------------------------------------


class _Hub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # what the hub answers for a model it does not have
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Repository not found"}')

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_hub_model_is_checked_before_the_data_is_prepared(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:  # a port nobody listens on: no network
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    path = recipe(tmp_path, model_name_or_path="someone/no-such-model")
    online = {k: v for k, v in env(HF_HOME=str(tmp_path / "hf")).items() if k != "HF_HUB_OFFLINE"}
    try:
        for endpoint, message in ((f"http://127.0.0.1:{server.server_port}", "the hub has no such model"),
                                  (f"http://127.0.0.1:{closed}", "the hub cannot be reached")):
            proc = subprocess.run([sys.executable, "-m", "ual.train", path], cwd=REPO, capture_output=True, text=True,
                                  env={**online, "HF_ENDPOINT": endpoint}, timeout=300)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert message in proc.stderr and "'someone/no-such-model'" in proc.stderr
            assert "examples/s" not in proc.stderr, "the model is checked before any data is prepared"
    finally:
        server.shutdown()


# --- stopping ual train stops every rank ----------------------------------------------------------------


def _launch(tmp_path, name):
    overlay = tmp_path / f"{name}.yaml"
    overlay.write_text(yaml.safe_dump({"accelerate_config": str(REPO / "accelerate_configs" / "cpu_ddp.yaml"),
                                       "num_processes": 2}))
    cmd = [sys.executable, "-m", "ual.cli", "train", "recipes/tiny.yaml", str(overlay), "--max_steps", "100000",
           "--save_strategy", "no", "--output_dir", str(tmp_path / name)]
    log = open(tmp_path / f"{name}.log", "w")  # a file, not a pipe: a full pipe would stall the ranks
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _ranks(proc, timeout=600):
    """The two training processes under ``ual train`` -> ``accelerate launch``, once both are past their imports."""
    import psutil

    def is_rank(p):
        try:
            cmd = " ".join(p.cmdline())
            return "ual.train" in cmd and "accelerate" not in cmd and p.cpu_times().user > 5
        except psutil.Error:
            return False

    deadline = time.time() + timeout
    while time.time() < deadline:
        ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if is_rank(p)]
        if len(ranks) == 2:
            return ranks
        assert proc.poll() is None, "ual train ended before its ranks started"
        time.sleep(0.5)
    raise AssertionError("the two ranks never started")


def _all_gone(processes, timeout=60):
    import psutil

    gone, alive = psutil.wait_procs(processes, timeout=timeout)
    for p in alive:
        p.kill()
    return not alive


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "kill-9"])
def test_stopping_ual_train_stops_every_rank(tmp_path, how):
    proc = _launch(tmp_path, how)
    try:
        ranks = _ranks(proc)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # a terminal sends SIGINT to the foreground process group
        elif how == "sigterm":
            proc.send_signal(signal.SIGTERM)  # a scheduler or `kill PID` signals the launcher alone
        else:
            proc.send_signal(signal.SIGKILL)  # nothing can be passed on: the ranks must notice themselves
        assert _all_gone(ranks), f"{how}: ranks still training"
        proc.wait(timeout=60)
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# --- console noise ---------------------------------------------------------------------------------------


def test_library_warnings_that_do_not_apply_are_filtered_and_others_pass(caplog):
    import ual  # noqa: F401  (installs the filters)

    with caplog.at_level(logging.WARNING):
        logging.getLogger("DeepSpeed").propagate = True
        try:
            logging.getLogger("DeepSpeed").warning(
                "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
            logging.getLogger("DeepSpeed").warning("a real DeepSpeed warning")
        finally:
            logging.getLogger("DeepSpeed").propagate = False
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure", "No module named x")
    assert "a real DeepSpeed warning" in caplog.text
    assert "Setting accelerator" not in caplog.text and "gemm_4bit_forward" not in caplog.text
