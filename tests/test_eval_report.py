"""``ual report``: two fake run directories (SFT and UAL) in the layout ``ual train`` + ``ual eval`` write."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from ual.eval.cli import main


def smoothing(strategy, mean, overall_mean):
    stats = {"overall": f"n=400 min=0.0 mean={overall_mean:.4f} max=0.2"} if overall_mean is not None else {}
    return {"settings": {"smoothing_strategy": strategy, "smoothing_mean": mean, "smoothing_convention": "paper"},
            "statistics": stats, "dropped_samples": {"train": 0}}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def make_run(root, name, *, strategy, mean, overall_mean, correct, n, gen_tokens, leaderboard=None):
    run = root / name
    write(run / "ual_smoothing.json", smoothing(strategy, mean, overall_mean))
    write(run / "trainer_state.json", {"global_step": 10})
    write(run / "eval/gsm8k/results.json", {
        "task": "gsm8k", "name": "gsm8k", "model": {"model": str(run)},
        "metrics": {"accuracy": correct / n, "accuracy_ci95": [0.25, 0.75] if name == "sft" else [0.4, 0.8],
                    "correct": correct, "n": n, "no_answer": 1, "truncated": 0, "gold_unreadable": 0},
    })
    write(run / "eval/gsm8k/settings.json", {"task": "gsm8k"})
    write(run / "eval/alpacaeval/results.json", {
        "task": "alpacaeval", "name": "alpacaeval", "generator": name, "model_outputs": "model_outputs.json",
        "metrics": {"n": 805, "mean_output_chars": 800.0, "mean_output_tokens": gen_tokens, "truncated": 3, "empty_outputs": 0},
    })
    write(run / "eval/alpacaeval/model_outputs.json", [])
    if leaderboard:  # what `alpaca_eval --model_outputs .../model_outputs.json` leaves: our row among precomputed ones
        write(run / "eval/alpacaeval/weighted_alpaca_eval_gpt4_turbo/leaderboard.csv", leaderboard)
    # a partial output directory of a crashed eval must be ignored
    write(run / "eval/.gsm8k.partial-abc/results.json", {"task": "gsm8k", "metrics": {"accuracy": 1.0}})
    return run


@pytest.fixture
def runs(tmp_path):
    sft = make_run(tmp_path, "sft", strategy="none", mean=0.1, overall_mean=0.0, correct=2, n=4, gen_tokens=200.5)
    lb = (",win_rate,standard_error,n_total,length_controlled_winrate,lc_standard_error\n"
          "gpt4_turbo,50.0,0.0,805,50.0,0.0\n"
          "ual,12.5,1.0,805,15.25,0.5\n")
    ual = make_run(tmp_path, "ual", strategy="uncertainty", mean=0.1, overall_mean=0.1, correct=3, n=4, gen_tokens=180.0,
                   leaderboard=lb)
    return sft, ual


EXPECTED = """\
| run | smoothing | ε mean | alpacaeval mean_output_tokens | alpacaeval weighted_alpaca_eval_gpt4_turbo length_controlled_winrate | alpacaeval weighted_alpaca_eval_gpt4_turbo win_rate | gsm8k accuracy |
|---|---|---|---:|---:|---:|---:|
| sft | none | 0 | 200.5 | — | — | 50.0 [25.0, 75.0] (n=4) |
| ual | uncertainty | 0.1 | 180 | 15.25 [14.27, 16.23] | 12.5 [10.54, 14.46] | 75.0 [40.0, 80.0] (n=4) |
"""


def test_report_table_of_two_runs(runs, capsys):
    assert main(["report", str(runs[0]), str(runs[1])]) == 0
    assert capsys.readouterr().out == EXPECTED


def test_report_files_and_all_metrics(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--output-dir", str(out), "--all-metrics"]) == 0
    table = (out / "report.md").read_text()
    header = table.splitlines()[0]
    for col in ("gsm8k accuracy", "gsm8k no_answer", "gsm8k truncated", "alpacaeval truncated", "alpacaeval empty_outputs"):
        assert f"| {col} |" in header or f"| {col} " in header
    assert "gsm8k correct" not in header and "gsm8k n " not in header  # folded into the accuracy cell
    rows = (out / "report.csv").read_text().splitlines()
    assert rows[0].startswith("run,path,smoothing_strategy,smoothing_mean,metric,value")
    assert any(r.startswith("ual,") and ",gsm8k accuracy,0.75," in r for r in rows)
    from matplotlib.image import imread

    img = imread(out / "report.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0
    # the output directory is refused the second time, unless --overwrite
    assert main(["report", *map(str, runs), "--output-dir", str(out)]) == 2
    assert main(["report", *map(str, runs), "--output-dir", str(out), "--overwrite"]) == 0
    assert "gsm8k no_answer" not in (out / "report.md").read_text()


def test_report_bad_inputs(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no eval results" in capsys.readouterr().err


def test_python_dash_m_entry_point(runs):
    done = subprocess.run([sys.executable, "-m", "ual.eval", "report", *map(str, runs)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == EXPECTED


def test_applied_mean_eps_is_read_as_a_number_for_the_runs_normalisation(tmp_path):
    from ual.eval.report import read_smoothing

    base = {"settings": {"smoothing_strategy": "uncertainty", "smoothing_mean": 0.1},
            "statistics": {"mean": 0.1, "overall": "n=4 mean=0.9999 (prose is not read)"},
            "applied": {"sample_mean": 0.08, "token_mean": 0.06}}
    for normalization, want in (("sample", 0.08), ("token", 0.06), (None, 0.06)):
        data = json.loads(json.dumps(base))
        if normalization:
            data["settings"]["loss_normalization"] = normalization
        write(tmp_path / str(normalization) / "ual_smoothing.json", data)
        assert read_smoothing(tmp_path / str(normalization)) == ("uncertainty", want)
    del base["applied"]
    write(tmp_path / "old" / "ual_smoothing.json", base)
    assert read_smoothing(tmp_path / "old") == ("uncertainty", 0.1)  # the fitted mean, a number


def with_samples(run, outcomes, questions=None):
    rows = [{"index": i, "question": (questions or {}).get(i, f"q{i}"), "correct": ok} for i, ok in enumerate(outcomes)]
    write(run / "eval/gsm8k/samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def test_paired_comparison_on_the_same_problems(runs, tmp_path, capsys):
    sft, ual = runs
    base = [i % 2 == 0 for i in range(40)]  # 20 of 40
    better = list(base)
    for i in (1, 3, 5, 7, 9, 11, 13, 15, 17, 19):
        better[i] = True  # gains 10
    better[0] = better[2] = False  # loses 2
    with_samples(sft, base)
    with_samples(ual, better)
    out = tmp_path / "report"
    assert main(["report", str(sft), str(ual), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    # by hand: exact two-sided binomial p of 2 in 12 discordant pairs = 2 * (1 + 12 + 66) / 2^12; the paired Wald
    # interval: d = 8/40, se = sqrt(12 - 8^2/40) / 40
    p = 2 * (1 + 12 + 66) / 4096
    half = 1.959963984540054 * (12 - 64 / 40) ** 0.5 / 40
    assert f"+20.0 [{100 * (0.2 - half):+.1f}, {100 * (0.2 + half):+.1f}], p = {p:.3g} (+10/−2)" in printed
    rows = (out / "paired.csv").read_text().splitlines()
    assert rows[0] == "baseline,run,eval,n,gained,lost,difference,ci95_low,ci95_high,p_value"
    fields = rows[1].split(",")
    assert fields[:6] == ["sft", "ual", "gsm8k", "40", "10", "2"] and float(fields[9]) == pytest.approx(p, rel=1e-12)
    from matplotlib.image import imread

    assert imread(out / "paired.png").std() > 0


def test_no_paired_comparison_on_different_problems(runs, capsys):
    sft, ual = runs
    with_samples(sft, [True, False, True])
    with_samples(ual, [True, True, True], questions={2: "another question"})
    assert main(["report", str(sft), str(ual)]) == 0
    captured = capsys.readouterr()
    assert "Paired with" not in captured.out and "not evaluated on the same problems" in captured.err
