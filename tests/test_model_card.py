"""The model card a UAL run writes: TRL's card with the paper linked and cited, the smoothing settings, the fitted
mapping, the mean eps per source and what training applied; a local base model named, not "[None]"."""

import json

import pytest

from conftest import REPO
from ual.train import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_card_records_uncertainty_aware_smoothing(tmp_path):
    out = tmp_path / "run"
    trainer = main([str(REPO / "recipes/tiny.yaml"), "--output_dir", str(out), "--max_steps", "2",
                    "--model_name_or_path", str(REPO / "models/tiny-llama")])
    card = (out / "README.md").read_text()
    saved = json.loads((out / "ual_smoothing.json").read_text())
    assert "https://huggingface.co/papers/2406.04854" in card and "Uncertainty Aware Learning" in card
    assert "@inproceedings{wang2024uncertainty" in card
    assert "[None]" not in card and "models/tiny-llama` (a local model)" in card
    assert "| `smoothing_strategy` | uncertainty |" in card and "| `loss_normalization` | token |" in card
    for source, stats in saved["statistics"]["per_source"].items():  # every source's mean eps, as saved
        assert f"| {source} | {stats['rows']} | {stats['smoothing_mean']:.4f} |" in card
    applied = saved["applied"]
    assert f"mean ε {applied['sample_mean']:.4f} per sample and {applied['token_mean']:.4f} per trained token" in card
    assert card.index("### Uncertainty-aware smoothing") < card.index("### Framework versions")
    assert trainer.state.global_step == 2
