"""The ground-truth experiment (experiments/ground_truth/): its exact judges, its statistics, and a reduced run of
the whole pipeline (one seed, two arms, a small model) whose metrics are recomputed here. The scientific outcome is
in docs/ground_truth.md; nothing here asserts it."""

import json
import math
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments" / "ground_truth"))

import analyse  # noqa: E402
import tasks  # noqa: E402


@pytest.mark.parametrize("story", [tasks.Story("fox", "win a race", "forest"), tasks.Story("seal", "plant a tree", "meadow")])
def test_the_judges_probabilities_are_the_samplers(story):
    """Every sample parses, and the mean of -log p over samples estimates the closed-form entropy: within 5 standard
    errors (a false alarm about once in 3 million)."""
    rng = random.Random(0)
    nll = []
    for _ in range(4000):
        lp = story.log_prob(story.sample(rng))
        assert lp is not None
        nll.append(-lp)
    se = statistics.stdev(nll) / math.sqrt(len(nll))
    assert abs(statistics.mean(nll) - story.entropy()) < 5 * se


def test_the_judge_refuses_what_the_grammar_cannot_produce():
    story = tasks.Story("fox", "win a race", "forest")
    text = story.sample(random.Random(3))
    assert story.log_prob(text) is not None
    bad = [
        text.replace("fox", "cat"),                                          # another animal throughout
        text.replace("in the forest.", "in the river."),                     # the wrong place
        text.replace("won the race", "planted a tree"),                      # the wrong goal
        text + " Once there was a kind fox in the forest.",                  # an opening in the middle
        text.replace(". ", ".  ", 1),                                        # not single-spaced
        "Once there was a kind fox in the forest. In the end, the fox won the race.",  # too short
    ]
    for wrong in bad:
        assert story.log_prob(wrong) is None, wrong
    other_thing = "Once there was a kind fox in the forest. Every day the fox looked at the reeds. In the end, the fox won the race."
    assert story.log_prob(other_thing) is None  # reeds belong to the river
    assert story.log_prob(other_thing.replace("reeds", "trees")) is not None
    assert tasks.Story("fox", "win a race", "river").log_prob(other_thing.replace("forest", "river")) is not None


def test_arithmetic_solutions_are_right_step_by_step():
    rng = random.Random(0)
    for n_steps in (2, 3, 4):
        for _ in range(200):
            p = tasks.arithmetic_problem(rng, n_steps)
            steps = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)\.", p["completion"])
            assert len(steps) == n_steps
            for a, op, b, c in steps:
                assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
            assert tasks.read_answer(p["completion"]) == p["answer"] == int(steps[-1][3])
    assert tasks.read_answer("so The answer is: 12 or The answer is: 3") == 12
    assert tasks.read_answer("no number here") is None


def test_scores_normalised_entropy_and_noise():
    h_max = tasks.max_entropy()
    assert max(tasks.uncertainty_score(s.entropy(), h_max) for s in tasks.all_stories()) == pytest.approx(99)
    rng = random.Random(0)
    noisy = [tasks.noisy_score(50.0, rng) for _ in range(4000)]
    assert all(v == round(v) and 0 <= v <= 99 for v in noisy)
    assert statistics.stdev(noisy) == pytest.approx(10, rel=0.05)  # sd of a sample sd at n=4000: about 1.1%
    assert tasks.noisy_score(98.0, random.Random(1), sd=50) in range(0, 100)


def test_holm_win_rate_and_the_preregistered_verdict():
    assert analyse.holm([0.01, 0.04]) == [0.02, 0.04]
    assert analyse.holm([0.03, 0.02, 0.5]) == [0.06, 0.06, 0.5]  # step-down, kept monotone
    a = {"stories_logp": [-10.0, None, -5.0, None]}
    b = {"stories_logp": [-12.0, -3.0, -5.0, None]}
    assert analyse.win_rate(a, b) == (1 + 0 + 0.5 + 0.5) / 4
    assert analyse.win_rate(b, b) == 0.5

    def diff(mean, lo, hi, p):
        return {"mean": mean, "lo": lo, "hi": hi, "p": p}

    up = {k: diff(0.05, 0.03, 0.07, 0.001) for k in analyse.PRIMARY}
    assert analyse.verdict(up, {k: diff(0.02, 0.01, 0.03, 0.01) for k in analyse.PRIMARY})[0] == "reproduced"
    assert analyse.verdict(up, {k: diff(0.02, -0.01, 0.05, 0.2) for k in analyse.PRIMARY})[0] == "inconclusive"
    worse = dict(up, arith_hard_greedy=diff(-0.05, -0.07, -0.03, 0.001))
    assert analyse.verdict(worse, None)[0] == "refuted"
    flat = {k: diff(0.001, -0.01, 0.015, 0.7) for k in analyse.PRIMARY}
    assert analyse.verdict(flat, None)[0] == "refuted"  # both intervals exclude a 2-point gain
    assert analyse.verdict({k: diff(0.01, -0.01, 0.03, 0.3) for k in analyse.PRIMARY}, None)[0] == "inconclusive"


@pytest.mark.slow
def test_reduced_experiment_runs_and_its_metrics_are_recomputable(tmp_path):
    """One seed, two arms, a 2-layer model: everything runs through ual.train, and each metric is checked against
    an independent recomputation from what the run left on disk."""
    out = tmp_path / "gt"
    cmd = [sys.executable, "experiments/ground_truth/run.py", "--small", "--seeds", "0", "--arms", "sft", "ual",
           "--epochs", "1", "--pretrain-epochs", "1", "--out", str(out), "--no-docs"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verdict:" in proc.stdout

    rows = [json.loads(line) for f in ("arithmetic.jsonl", "stories.jsonl") for line in (out / f).read_text().splitlines()]
    eps = [r["eps_ual"] for r in rows]
    assert statistics.mean(eps) == pytest.approx(0.1, abs=1e-9)
    assert sorted(r["eps_shuffled"] for r in rows) == sorted(eps)
    stories_eps = [r["eps_ual"] for r in rows if r["task"] == "story"]
    high_only = {r["eps_high_only"] for r in rows if r["task"] == "story"}
    assert len(high_only) == 1 and high_only.pop() == pytest.approx(statistics.mean(stories_eps), rel=1e-12)
    assert {r["eps_high_only"] for r in rows if r["task"] == "arithmetic"} == {0.0}
    saved = json.loads((out / "runs" / "ual-seed0" / "ual_smoothing.json").read_text())
    assert saved["statistics"]["mean"] == pytest.approx(0.1, abs=1e-6)  # ual.train fitted the mapping prepare() used
    assert saved["settings"]["loss_normalization"] == "sample"

    tests = json.loads((out / "tests.json").read_text())
    report = json.loads((out / "analysis.json").read_text())
    for arm in ("sft", "ual"):
        m = report["per_seed"][arm]["0"]
        items = json.loads((out / "runs" / f"{arm}-seed0" / "items.json").read_text())
        for key in ("arith_id_greedy", "arith_hard_sampled"):
            assert m[key] == sum(items[key]) / len(items[key]) and len(items[key]) == len(tests[key.rsplit("_", 1)[0]])
        logps = items["stories_logp"]
        assert len(logps) == len(tests["stories"]) * tests["story_samples"]
        assert m["stories_valid"] == sum(lp is not None for lp in logps) / len(logps)
        true_nll = -statistics.mean(lp for s in tests["stories"] for lp in s["reference_logp"])
        assert m["stories_true_nll"] == pytest.approx(true_nll, rel=1e-12)
        assert m["stories_kl"] + m["stories_true_nll"] > 0  # the model's cross-entropy on true references
        for key, value in m.items():
            assert math.isfinite(value), key
    assert report["per_seed"]["sft"]["0"]["stories_win_vs_sft"] == 0.5
    d = report["paired"]["ual-sft"]["stories_valid"]
    assert d["diffs"] == [report["per_seed"]["ual"]["0"]["stories_valid"] - report["per_seed"]["sft"]["0"]["stories_valid"]]
    assert report["verdict"] in ("reproduced", "refuted", "inconclusive")


@pytest.mark.slow
def test_reference_log_probabilities_batched_equal_one_at_a_time(tmp_path, tiny_model_path):
    """The KL estimate's log q(reference): left-to-right padding in a batch must not change any sequence's value."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluate_run import reference_logq

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    story = tasks.Story("owl", "learn to sing", "lake")
    rng = random.Random(0)
    refs = [story.sample(rng) for _ in range(3)]
    prompts = [story.prompt(0)] * 3
    batched = reference_logq(model, tokenizer, prompts, refs, batch_size=3)
    single = [reference_logq(model, tokenizer, [p], [r], batch_size=1)[0] for p, r in zip(prompts, refs)]
    assert batched == pytest.approx(single, rel=1e-9)
    # and one by hand: the completion's tokens and its end token, each scored by the logits before it
    full = tokenizer.apply_chat_template([{"role": "user", "content": prompts[0]}, {"role": "assistant", "content": refs[0]}],
                                         tokenize=True, return_dict=True)["input_ids"]
    start = len(tokenizer.apply_chat_template([{"role": "user", "content": prompts[0]}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"])
    end = full.index(tokenizer.eos_token_id, start) + 1
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([full[:end]])).logits[0].double().log_softmax(-1)
    by_hand = sum(float(logp[i - 1, full[i]]) for i in range(start, end))
    assert single[0] == pytest.approx(by_hand, rel=1e-9)
