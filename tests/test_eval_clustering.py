"""``ual analyze clustering``: the paper's token-clustering analysis on the tiny model, a briefly trained
copy and a LoRA adapter; and its pieces on data whose answer is known."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from conftest import SAMPLE_DATA, cpu_config, write_jsonl
from ual.eval.cli import main
from ual.eval.clustering import next_token_positions, pair_scores, subsample, top_tokens
from ual.eval.models import ModelSpec


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(tmp, model_path, out_name, peft_config=None):
    from datasets import Dataset

    from ual.formats import convert
    from ual.trainer import UALTrainer

    rows = [json.loads(line) for line in (SAMPLE_DATA / "alpaca_200.jsonl").read_text().splitlines()[:32]]
    ds = Dataset.from_list([{**convert(r, "alpaca"), "uncertainty": r["uncertainty"]} for r in rows])
    out = tmp / out_name
    args = cpu_config(tmp, output_dir=str(out), max_steps=8, learning_rate=5e-3, per_device_train_batch_size=4)
    trainer = UALTrainer(model=model_path, args=args, train_dataset=ds, peft_config=peft_config)
    trainer.train()
    trainer.save_model(str(out))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_path):
    """A full fine-tune and a LoRA adapter, 8 UALTrainer steps each."""
    from peft import LoraConfig

    tmp = tmp_path_factory.mktemp("trained")
    full = _train(tmp, tiny_model_path, "ual-full")
    lora = _train(tmp, tiny_model_path, "ual-lora", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    return full, lora


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # about 15 s: trains two models
def test_clustering_of_base_trained_and_adapter(tmp_path, tiny_model_path, trained):
    full, lora = trained
    out = tmp_path / "clustering"
    argv = ["analyze", "clustering", "--model", f"base={tiny_model_path}", "--model", f"ual={full}",
            "--model", f"lora={tiny_model_path}:{lora}", "--num-tokens", "5", "--max-samples", "24",
            "--max-length", "96", "--output-dir", str(out), "--no-progress"]
    assert main(argv) == 0
    assert {p.name for p in out.iterdir()} == {
        "pairs.csv", "summary.csv", "tokens.csv", "silhouette_boxplot.png", "best_pair_scatter.png",
        "results.json", "settings.json",
    }
    pairs = read_csv(out / "pairs.csv")
    assert len(pairs) == 3 * 10  # 3 models x C(5, 2) pairs
    for row in pairs:
        s = float(row["silhouette"])
        assert math.isfinite(s) and -1.0 <= s <= 1.0, row
        assert int(row["n_a"]) >= 2 and int(row["n_b"]) >= 2
    summary = {r["model"]: r for r in read_csv(out / "summary.csv")}
    assert set(summary) == {"base", "ual", "lora"}
    for name, row in summary.items():
        mine = [float(p["silhouette"]) for p in pairs if p["model"] == name]
        assert float(row["mean"]) == pytest.approx(np.mean(mine), abs=1e-5)
        assert int(row["num_pairs"]) == 10
    # same tokenizer and text: the same 5 tokens for every model, with their counts
    tokens = read_csv(out / "tokens.csv")
    by_model = {m: [t["token_id"] for t in tokens if t["model"] == m] for m in summary}
    assert by_model["base"] == by_model["ual"] == by_model["lora"] and len(by_model["base"]) == 5
    # training moved the hidden states; the adapter is really applied
    base = {(p["token_a"], p["token_b"]): float(p["silhouette"]) for p in pairs if p["model"] == "base"}
    for name in ("ual", "lora"):
        other = {(p["token_a"], p["token_b"]): float(p["silhouette"]) for p in pairs if p["model"] == name}
        assert other != base
    results = json.loads((out / "results.json").read_text())
    assert len(results["best_pair"]) == 2 and results["models"][2]["adapter"] == str(lora.resolve())
    settings = json.loads((out / "settings.json").read_text())
    assert settings["num_tokens"] == 5 and settings["data"]["path"].endswith("alpaca_eval.json")
    from matplotlib.image import imread

    for png in ("silhouette_boxplot.png", "best_pair_scatter.png"):
        img = imread(out / png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 0.01


def test_clustering_bad_inputs(tmp_path, tiny_model_path, capsys):
    missing = str(tmp_path / "nope")
    assert main(["analyze", "clustering", "--model", missing, "--output-dir", str(tmp_path / "o")]) == 2
    assert missing in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"title": "no text column"}])
    assert main(["analyze", "clustering", "--model", tiny_model_path, "--data", str(bad), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "row 0" in err and not (tmp_path / "o").exists()
    assert main(["analyze", "clustering", "--model", tiny_model_path, "--model", tiny_model_path,
                 "--output-dir", str(tmp_path / "o")]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    assert main(["analyze", "clustering", "--model", tiny_model_path, "--output-dir", str(tmp_path / "o")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_plain_text_rows_and_plain_rendering(tmp_path, tiny_model_path):
    rows = [{"text": "the cat sat on the mat. the dog sat on the log. " * 3} for _ in range(4)]
    data = write_jsonl(tmp_path / "text.jsonl", rows)
    out = tmp_path / "o"
    assert main(["analyze", "clustering", "--model", tiny_model_path, "--data", str(data), "--num-tokens", "3",
                 "--plain", "--output-dir", str(out), "--no-progress"]) == 0
    assert len(read_csv(out / "pairs.csv")) == 3


def test_separated_clusters_score_near_one_and_mixed_near_zero():
    rng = np.random.default_rng(0)
    apart = {1: rng.normal(0, 1, (200, 16)), 2: rng.normal(0, 1, (200, 16)) + 20.0}
    mixed = {1: rng.normal(0, 1, (200, 16)), 2: rng.normal(0, 1, (200, 16))}
    (s_apart,), points = pair_scores(apart, seed=0, progress=False)
    (s_mixed,), _ = pair_scores(mixed, seed=0, progress=False)
    assert s_apart.silhouette > 0.9
    assert abs(s_mixed.silhouette) < 0.1
    pts, is_b = points[(1, 2)]
    assert pts.shape == (400, 2) and is_b.sum() == 200


def test_next_token_labels_counts_and_subsampling():
    seqs = [[5, 7, 7, 9, 0], [7, 9, 9, 1]]
    pos = next_token_positions(seqs, exclude={0})
    assert pos[7] == [(0, 0), (0, 1)]
    assert pos[9] == [(0, 2), (1, 0), (1, 1)] and 0 not in pos and pos[1] == [(1, 2)]
    assert top_tokens(pos, 5) == [9, 7]  # 1 occurs once: dropped
    chosen = subsample(pos, [9, 7], max_per_token=2, seed=0)
    assert len(chosen[9]) == 2 and set(chosen[9]) <= set(pos[9]) and chosen[7] == pos[7]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("models/x", ModelSpec("models/x")),
        ("base=models/x", ModelSpec("models/x", None, "base")),
        ("models/x:out/adapter", ModelSpec("models/x", "out/adapter")),
        ("ual=org/model:out/adapter", ModelSpec("org/model", "out/adapter", "ual")),
    ],
)
def test_model_spec_parsing(text, expected):
    assert ModelSpec.parse(text) == expected


def test_features_are_the_input_of_lm_head(tiny_model_path):
    """For Llama the input of lm_head is the backbone's normed last hidden state: compare position by position."""
    from ual.eval.clustering import collect_features
    from ual.eval.models import load_model

    model, tokenizer = load_model(ModelSpec(tiny_model_path))
    seqs = [tokenizer("the cat sat on the mat")["input_ids"], tokenizer("a dog")["input_ids"]]
    chosen = {seqs[0][2]: [(0, 1), (1, 0)], seqs[0][4]: [(0, 3)]}
    feats = collect_features(model, seqs, chosen, tokenizer.pad_token_id, batch_size=2, progress=False)
    with torch.no_grad():
        ref = [model.model(input_ids=torch.tensor([s])).last_hidden_state[0] for s in seqs]
    for t, positions in chosen.items():
        expected = np.stack([ref[s][p].numpy() for s, p in positions])
        np.testing.assert_allclose(feats[t], expected, rtol=1e-5, atol=1e-5)
    # the model still works normally afterwards (the hook is removed)
    assert model(input_ids=torch.tensor([seqs[1]])).logits.shape[-1] == len(tokenizer)


def test_paper_data_setting_reads_lima_prompts_alone_in_the_authors_format(tmp_path, tiny_model_path):
    rows = [{"conversations": [f"Tell me about cats and dogs, number {i}. The cat sat on the mat."], "source": "lima"}
            for i in range(6)]
    rows.append({"conversations": ["What do dogs eat?", "RESPONSE NEVER READ"], "source": "lima"})
    data = write_jsonl(tmp_path / "lima_test.jsonl", rows)
    out = tmp_path / "o"
    assert main(["analyze", "clustering", "--model", f"a={tiny_model_path}", "--model", f"b={tiny_model_path}",
                 "--data", str(data), "--data-setting", "paper", "--num-tokens", "4", "--authors-selection", "a", "b",
                 "--output-dir", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["data_setting"] == "paper" and settings["max_length"] == 1024
    # scripts/prepare_lima.py's generate_prompt: one leading newline, the prompt, then the assistant header
    assert settings["first_text"] == "\n### User: " + rows[0]["conversations"][0] + "\n\n### Assistant: "
    picked = json.loads((out / "results.json").read_text())["authors_selection"]
    assert picked["pairs_selected"] == 6 and "NOT the mean over all pairs" in picked["selection"]
    assert picked["mean"]["a"] == pytest.approx(picked["mean"]["b"])  # the same model twice


def test_authors_selection_keeps_the_pairs_with_the_largest_ual_over_ls_ratio():
    from ual.eval.clustering import PairScore, authors_selection

    def analysis(label, values):
        text = {t: f"t{t}" for t in range(1, 6)}
        pairs = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4)]
        return {"spec": ModelSpec.parse(f"{label}=m"), "text": text,
                "scores": [PairScore(a, b, 9, 9, v) for (a, b), v in zip(pairs, values)]}

    ls = analysis("ls", [0.50, 0.40, 0.20, -0.30, 0.10])
    ual = analysis("ual", [0.40, 0.60, 0.40, -0.10, 0.05])
    picked = authors_selection([ls, ual], "ls", "ual", k=2)
    # ratios: 0.8, 1.5, 2.0, (negative mean -> 1e-9/1e-9 = 1), 0.5: the top two are pairs 3 and 2
    assert picked["mean"]["ual"] == pytest.approx((0.40 + 0.60) / 2)
    assert picked["mean"]["ls"] == pytest.approx((0.20 + 0.40) / 2)
    assert picked["mean_all_pairs"]["ls"] == pytest.approx(np.mean([0.5, 0.4, 0.2, -0.3, 0.1]))
    with pytest.raises(Exception, match="no model labelled"):
        authors_selection([ls, ual], "ls", "nope")
