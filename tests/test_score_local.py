"""Local-model scorers: ``--judge hf`` (a transformers model as judge) and ``--judge model-nll``.

The models are tiny random Llamas built here with a word-level tokenizer (nothing is downloaded;
HF_HUB_OFFLINE=1). A random model's replies are garbage, which must end as recorded failures; a
model whose output layer is zeroed always emits token 0 ("42"), which must be read as a score.
"""

import json
import math
from pathlib import Path

import pytest

from ual.score.cli import main

WORDS = ["<unk>", "<pad>", "<s>", "</s>"] + [f"w{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


@pytest.fixture(scope="module", autouse=True)
def _offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


def build_model(path: Path, words: list[str], zero_head: bool = False) -> str:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
        pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if zero_head:
        with torch.no_grad():
            model.lm_head.weight.zero_()  # all logits equal -> greedy picks token 0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def garbage_model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("garbage"), WORDS)


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("fixed"), ["42"] + WORDS, zero_head=True)


ROWS = [
    {"messages": [{"role": "user", "content": "wa wb wc"}, {"role": "assistant", "content": "wd we"}]},
    {"prompt": "wf wg", "completion": "wh wi wj wk"},
    {"text": "wl wm wn wo wp wq wr ws"},
    {"prompt": "wf wg", "completion": "wh wi wj wk"},  # a duplicate
    {"question": "wt", "answer": "wu wv ww wx wy wz wa wb wc wd"},
]


def write_rows(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return src


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_hf_judge_garbage_replies_are_retried_then_failures(tmp_path, garbage_model, capsys):
    src = write_rows(tmp_path)
    out = tmp_path / "out.jsonl"
    rc = main([str(src), "-o", str(out), "--judge", "hf", "--model", garbage_model, "--batch-size", "2",
               "--max-tokens", "6", "--no-progress"])
    assert rc == 1
    result = read_jsonl(out)
    assert [r["uncertainty"] for r in result] == [None] * len(ROWS)
    assert {r["uncertainty_method"] for r in result} == {f"judge:hf:{garbage_model}"}
    failures = read_jsonl(str(out) + ".failures.jsonl")
    assert len(failures) == 4 and sorted(r for f in failures for r in f["rows"]) == [0, 1, 2, 3, 4]
    assert all(len(f["replies"]) == 2 and "after the reminder" in f["error"] for f in failures)
    assert "failed: 4 (5 rows)" in capsys.readouterr().out
    cache = read_jsonl(str(out) + ".cache.jsonl")  # the garbage is on record, not counted as answered
    assert len(cache) == 4 and all(r["score"] is None for r in cache)


def test_hf_judge_reads_a_score_and_resumes_from_cache(tmp_path, fixed_model, capsys):
    src = write_rows(tmp_path)
    out = tmp_path / "out.parquet"
    argv = [str(src), "-o", str(out), "--judge", "hf", "--model", fixed_model, "--batch-size", "3",
            "--max-tokens", "3", "--no-progress"]
    assert main(argv) == 0
    import pyarrow.parquet as pq

    result = pq.read_table(out).to_pylist()
    assert [r["uncertainty"] for r in result] == [42.0] * len(ROWS)
    assert result[0]["uncertainty_raw_reply"] == "42 42 42"
    assert result[1]["prompt"] == ROWS[1]["prompt"]
    assert "scored now: 4  from cache: 0" in capsys.readouterr().out
    assert main(argv) == 0
    assert "scored now: 0  from cache: 4" in capsys.readouterr().out


def test_model_nll_scores_follow_the_formula_and_do_not_depend_on_batching(tmp_path, garbage_model, capsys):
    src = write_rows(tmp_path)
    results = {}
    for batch in ("1", "4"):
        out = tmp_path / f"out{batch}.jsonl"
        rc = main([str(src), "-o", str(out), "--judge", "model-nll", "--model", garbage_model, "--batch-size", batch,
                   "--no-progress"])
        assert rc == 0
        results[batch] = read_jsonl(out)
    rows = results["1"]
    assert {r["uncertainty_method"] for r in rows} == {f"model-nll:{garbage_model}"}
    assert {r["uncertainty_prompt_version"] for r in rows} == {"model-nll-v1(center=50,beta=1)"}
    nll = [float(r["uncertainty_raw_reply"].removeprefix("nll=")) for r in rows]
    assert all(x > 0 for x in nll)
    # Padding does not change a sample's loss.
    assert nll == pytest.approx([float(r["uncertainty_raw_reply"][4:]) for r in results["4"]], rel=1e-4)
    mean = sum(nll) / len(nll)
    for row, x in zip(rows, nll):
        assert row["uncertainty"] == pytest.approx(min(99.0, max(0.0, 50 * (1 + (x - mean) / mean))), abs=1e-3)
    assert rows[1]["uncertainty"] == rows[3]["uncertainty"]  # the duplicate
    # Another spread reuses the measured losses (nothing is recomputed) and follows the same formula.
    capsys.readouterr()
    out = tmp_path / "out1.jsonl"
    assert main([str(src), "-o", str(out), "--judge", "model-nll", "--model", garbage_model, "--nll-beta", "0.5",
                 "--no-progress"]) == 0
    assert "scored now: 0  from cache: 4" in capsys.readouterr().out
    half = read_jsonl(out)
    assert {r["uncertainty_prompt_version"] for r in half} == {"model-nll-v1(center=50,beta=0.5)"}
    for row, x in zip(half, nll):
        assert row["uncertainty"] == pytest.approx(min(99.0, max(0.0, 50 * (1 + 0.5 * (x - mean) / mean))), abs=1e-3)
    # The NLL really is the model's mean token loss on that text.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(garbage_model)
    model = AutoModelForCausalLM.from_pretrained(garbage_model)
    ids = tokenizer("Text: " + ROWS[2]["text"], return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert math.isclose(nll[2], loss, rel_tol=1e-4)
