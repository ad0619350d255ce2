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


def test_the_mapping_and_mean_eps_reach_tensorboard_once_at_the_start(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, logs = tmp_path / "run", tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logs))  # transformers 5: where TensorBoardCallback writes
    trainer = main([str(REPO / "recipes/tiny.yaml"), "--output_dir", str(out), "--max_steps", "2", "--logging_steps",
                    "1", "--report_to", "tensorboard", "--model_name_or_path", str(REPO / "models/tiny-llama")])
    # trackers only: the trainer's own log history is SFTTrainer's, its first entry the first logged step
    assert trainer.state.log_history[0]["step"] == 1 and "loss" in trainer.state.log_history[0]
    assert not any(k.startswith("ual/") for entry in trainer.state.log_history for k in entry)
    saved = json.loads((out / "ual_smoothing.json").read_text())
    events = [p for p in logs.rglob("events.out.tfevents.*")]
    assert events, "TensorBoard wrote no event file"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])

    def only(tag):
        points = acc.Scalars(tag)
        assert len(points) == 1, f"{tag} logged {len(points)} times"
        return points[0]

    assert only("train/ual/eps_mean").value == pytest.approx(saved["statistics"]["mean"], rel=1e-6)
    assert only("train/ual/mapping/scale").value == pytest.approx(saved["statistics"]["mapping"]["scale"], rel=1e-6)
    assert only("train/ual/applied/token_mean").value == pytest.approx(saved["applied"]["token_mean"], rel=1e-6)
    for source, stats in saved["statistics"]["per_source"].items():
        assert only(f"train/ual/source/{source}/eps_mean").value == pytest.approx(stats["smoothing_mean"], rel=1e-6)
    assert only("train/ual/eps_mean").step == 0 and "train/loss" in scalars
