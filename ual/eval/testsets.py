"""The UAL authors' MetaMath test set, rebuilt from a local MetaMathQA file, and how much it overlaps training.

    ual testset metamath MetaMathQA-395K.json --output data/eval/metamath_test.jsonl --train data/train.jsonl

Their ``math_bench.py`` takes the LAST 1,030 rows of MetaMathQA's train split as a test set; its gold is the
last word of the response. These rows are rephrasings (MetaMathQA's augmentations) of the same GSM8K/MATH
problems as other rows of that split, so a model trained on MetaMathQA has seen their source problems. The
overlap report makes that visible before anyone quotes an accuracy: exact copies of a test question in the
training file, near-duplicates (TF-IDF cosine of word 1-2-grams), and, where both files carry MetaMathQA's
``original_question``, test rows whose source problem is in training.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ual.errors import UsageError
from ual.eval import answers, data, protocols
from ual.files import write_atomic

METAMATH_TEST_ROWS = 1030
NEAR_THRESHOLDS = (0.9, 0.8)


def metamath_test_rows(rows: list[dict], source: str, last: int = METAMATH_TEST_ROWS) -> list[dict]:
    """The last ``last`` rows, each with the authors' gold (last word) and the parsed one (after 'The answer is:')."""
    data.check_columns(rows, ("query", "response"), source, "the MetaMath test set")
    if len(rows) < last:
        raise UsageError(f"{source!r} has {len(rows):,} rows; the authors' test set is its last {last:,} "
                         "(MetaMathQA's train split has 395,000)")
    start = len(rows) - last
    out = []
    for offset, row in enumerate(rows[start:]):
        try:
            parsed = answers.gold_metamath(row["response"])
        except ValueError:
            parsed = None
        out.append({**row, "source_row": start + offset, "gold_paper": protocols.paper_gold("metamath", row["response"]),
                    "gold": parsed})
    return out


def normalise(text: str) -> str:
    """Case, whitespace and punctuation folded, so trivially different copies compare equal."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.casefold())).strip()


def question_of(row: dict) -> str | None:
    """A training row's question: MetaMathQA's ``query``, else the first user turn of any ``ual.formats`` shape."""
    if isinstance(row.get("query"), str):
        return row["query"]
    from ual.formats import detect_format, turns

    fmt = detect_format(k for k, v in row.items() if v is not None)
    if fmt is None:
        return None
    user = [m.get("content") for m in turns(row, fmt) if m.get("role") in ("user", "text")]
    return user[0] if user and isinstance(user[0], str) else None


def overlap_report(test: list[dict], train: list[dict], train_source: str, examples: int = 5) -> dict:
    """Exact, near-duplicate and same-source-problem overlap of the test questions with a training file."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    questions = [question_of(r) for r in train]
    train_q = [q for q in questions if q]
    if not train_q:
        raise UsageError(f"--train {train_source!r}: no row has a question (a 'query' or a first user turn)")
    exact_set = {normalise(q) for q in train_q}
    exact = [i for i, row in enumerate(test) if normalise(row["query"]) in exact_set]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(train_q + [r["query"] for r in test])
    train_m = vectorizer.transform(train_q)
    best, best_j = [], []
    for start in range(0, len(test), 256):  # [256, N_train] sparse products: memory stays small
        sims = vectorizer.transform([r["query"] for r in test[start : start + 256]]) @ train_m.T
        for row in sims.tocsr():
            if row.nnz:
                k = row.data.argmax()
                best.append(float(row.data[k]))
                best_j.append(int(row.indices[k]))
            else:
                best.append(0.0)
                best_j.append(-1)
    report = {"train": data.describe_source(train_source), "train_rows": len(train), "train_questions": len(train_q),
              "test_rows": len(test), "exact": len(exact),
              "near": {f"cosine>={t}": sum(s >= t for s in best) for t in NEAR_THRESHOLDS},
              "nearest_cosine_mean": sum(best) / len(best)}
    originals = {r.get("original_question") for r in train if isinstance(r.get("original_question"), str)}
    if originals and all(isinstance(r.get("original_question"), str) for r in test):
        report["same_original_question"] = sum(r["original_question"] in originals for r in test)
    order = sorted(range(len(test)), key=lambda i: -best[i])[:examples]
    report["closest"] = [{"test_row": test[i]["source_row"], "test": test[i]["query"], "train": train_q[best_j[i]],
                          "cosine": round(best[i], 4)} for i in order if best_j[i] >= 0]
    return report


def build_metamath(source: str, output: str, train: list[str], overwrite: bool = False) -> dict:
    """Write the test set (JSONL) and, with ``train``, ``OUTPUT.overlap.json``; returns the overlap reports."""
    out = Path(output).expanduser()
    overlap_path = out.with_name(out.name + ".overlap.json")
    for path in (out, overlap_path):
        if path.exists() and not overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"--output {output!r}: the folder {out.parent} does not exist")
    train_rows = [(t, data.load_rows(t, split="train")) for t in train]  # every input read before any writing
    test = metamath_test_rows(data.load_rows(source, split="train"), source)
    reports = [overlap_report(test, rows, t) for t, rows in train_rows]

    def write_rows(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in test)

    write_atomic(out, write_rows)
    if reports:
        write_atomic(overlap_path, lambda tmp: Path(tmp).write_text(json.dumps(
            {"test": str(out), "source": data.describe_source(source), "reports": reports}, indent=2,
            ensure_ascii=False) + "\n"))
    return {"rows": len(test), "unparsed_gold": sum(r["gold"] is None for r in test), "reports": reports,
            "overlap_file": str(overlap_path) if reports else None}
