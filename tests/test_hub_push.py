"""`push_to_hub` through `ual train`, against a loopback stand-in for the Hub's upload API (tests/hub_server.py):
every pushed revision carries the card with the UAL section and ual_smoothing.json, mid-training pushes included,
and the final model is pushed at the end as `trl sft` does."""

import json
import os
import subprocess
import sys
from pathlib import Path

from hub_server import HubServer

REPO = Path(__file__).resolve().parent.parent


def test_every_push_carries_the_smoothing_record_and_the_card(tmp_path):
    out = tmp_path / "run"
    with HubServer() as hub:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_loopback_test_token", HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_XET="1", OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "ual.train", "recipes/tiny.yaml", "--output_dir", str(out), "--max_steps", "4",
               "--save_strategy", "steps", "--save_steps", "2", "--push_to_hub", "true", "--hub_model_id",
               "someone/ual-tiny", "--hub_strategy", "every_save", "--logging_steps", "2"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        commits = [c for c in hub.commits if c.repo == "someone/ual-tiny"]
        unexpected = list(hub.unexpected)

    assert "someone/ual-tiny" in hub.repos
    assert not unexpected, unexpected
    assert hub.validated_cards and all("ual" in card for card in hub.validated_cards)  # each card's YAML was checked
    mid = [c for c in commits if c.summary.startswith("Training in progress")]
    final = [c for c in commits if c.summary == "End of training"]
    assert mid, f"no mid-training push: {[c.summary for c in commits]}; unexpected requests: {unexpected}"
    assert len(final) == 1, [c.summary for c in commits]
    for commit in [*mid, *final]:
        files = commit.files
        assert "ual_smoothing.json" in files, (commit.summary, sorted(files))
        saved = json.loads(files["ual_smoothing.json"])
        assert saved["settings"]["smoothing_strategy"] == "uncertainty"
        card = files["README.md"].decode()
        assert "### Uncertainty-aware smoothing" in card and "2406.04854" in card, commit.summary
        assert "model.safetensors" in files and not any(p.startswith("checkpoint-") for p in files)
    pushed = json.loads(final[0].files["ual_smoothing.json"])
    assert pushed == json.loads((out / "ual_smoothing.json").read_text())  # the final record, byte for byte in JSON
