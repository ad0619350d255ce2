"""Shared fixtures: everything offline, on the tiny model shipped in models/tiny-llama."""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / "models" / "tiny-llama"
SAMPLE_DATA = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    assert (TINY_MODEL / "model.safetensors").exists(), "models/tiny-llama is missing: run python -m ual.tiny"
    return str(TINY_MODEL)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def cpu_config(tmp_path, **overrides):
    """A UALConfig for fast, deterministic CPU tests."""
    from ual.config import UALConfig

    defaults = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        per_device_train_batch_size=2,
        max_length=64,
        seed=0,
        save_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    defaults.update(overrides)
    return UALConfig(**defaults)


@pytest.fixture(scope="module")
def one_thread():
    """A 200k-parameter model runs ~10x faster on one thread than on two busy shared cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
