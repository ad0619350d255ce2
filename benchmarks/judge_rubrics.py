"""What each judge rubric (and structured output) costs on one judge: unreadable replies, re-asks, failures, tokens.

    python benchmarks/judge_rubrics.py --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \
        --rubric-file path/to/gpt4_ent_score.py       # -> docs/benchmarks/judge_rubrics_<model>.{json,md}

Runs ``ual score`` once per rubric (``ual``, and ``paper`` when --rubric-file is given) over the same rows
(default: the shipped data/sample files), against any OpenAI-compatible server, each rubric with its own
settings, and counts from each run's cache what the judge answered: a sample re-asked with the reminder is one
whose first reply could not be read as a single score; a failure is one whose second reply could not either.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_rubric(rubric: str, rows_file: Path, args, work: Path, response_format: str = "text") -> dict:
    from ual.score.cli import main as score

    out = work / f"{rubric}-{response_format}.jsonl"
    argv = [str(rows_file), "-o", str(out), "--model", args.model, "--base-url", args.base_url, "--rubric", rubric,
            "--allow-failures", "--no-progress", "--concurrency", str(args.concurrency),
            "--response-format", response_format]
    if rubric == "paper":
        argv += ["--rubric-file", str(args.rubric_file)]
    code = score(argv)
    if code != 0:
        raise SystemExit(f"judge_rubrics: ual score --rubric {rubric} exited {code}")
    records = [json.loads(line) for line in Path(str(out) + ".cache.jsonl").read_text().splitlines() if line.strip()]
    usage = {}
    for rec in records:
        for name, value in (rec.get("usage") or {}).items():
            usage[name] = usage.get(name, 0) + value
    samples = len(records)
    reasked = sum(1 for rec in records if len(rec.get("replies") or []) > 1)
    failed = sum(1 for rec in records if rec.get("score") is None)
    scores = [rec["score"] for rec in records if rec.get("score") is not None]
    return {"samples": samples, "requests": sum(len(rec.get("replies") or []) for rec in records),
            "first_reply_unreadable": reasked, "failed": failed,
            "reask_rate": reasked / samples if samples else 0.0, "failure_rate": failed / samples if samples else 0.0,
            "mean_score": sum(scores) / len(scores) if scores else None, "usage": usage,
            "example_unreadable": next((rec["replies"][0] for rec in records if len(rec.get("replies") or []) > 1), None)}


def markdown(result: dict) -> str:
    lines = [f"Judge `{result['model']}` at {result['base_url']}; {result['rows']} rows from "
             f"{', '.join(result['files'])}.", "",
             "| rubric | samples | requests | first reply unreadable (re-asked) | failed | mean score | tokens |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["rubrics"].items():
        mean = "—" if r["mean_score"] is None else f"{r['mean_score']:.1f}"
        lines.append(f"| {name} | {r['samples']} | {r['requests']} | {r['first_reply_unreadable']} "
                     f"({r['reask_rate']:.1%}) | {r['failed']} ({r['failure_rate']:.1%}) | {mean} | "
                     f"{r['usage'].get('total_tokens', '—')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="an OpenAI-compatible server, e.g. vLLM on 127.0.0.1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rubric-file", type=Path, default=None, help="the authors' gpt4_ent_score.py (for paper)")
    parser.add_argument("--files", nargs="+", type=Path,
                        default=sorted((REPO / "data" / "sample").glob("*.jsonl")))
    parser.add_argument("--limit", type=int, default=None, help="rows per file at most")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--response-formats", nargs="+", choices=("text", "json"), default=["text"],
                        help="also with structured output (json): each rubric once per format")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args()
    rows = []
    for path in args.files:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        for line in lines[: args.limit]:
            row = json.loads(line)
            for column in [c for c in row if c.startswith("uncertainty")]:
                del row[column]  # the shipped prior's provenance is not what is being measured
            rows.append(row)
    rubrics = ["ual"] + (["paper"] if args.rubric_file else [])
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        result = {"model": args.model, "base_url": args.base_url, "rows": len(rows),
                  "files": [p.name for p in args.files],
                  "rubrics": {name if fmt == "text" else f"{name}+json": run_rubric(name, rows_file, args, Path(tmp), fmt)
                              for name in rubrics for fmt in args.response_formats}}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", args.model).strip("_")
    (args.out / f"judge_rubrics_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"judge_rubrics_{tag}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
