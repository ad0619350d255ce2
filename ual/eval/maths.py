"""GSM8K and MetaMath-style accuracy: 0-shot (or k-shot as earlier chat turns), greedy by default, final
answers compared with math-verify, accuracy with a Wilson 95% interval, one JSONL line per problem.

The paper's metric was "gold answer appears in the output" (PAPER.md §5), which counts a rambling output
that mentions the right number anywhere; here the model's *final* answer is parsed and compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ual.eval import answers, data
from ual.errors import UsageError
from ual.eval.generate import Generation
from ual.eval.runner import EvalOptions, base_settings, check_inputs, generate_for, write_results
from ual.eval.stats import wilson_interval


@dataclass(frozen=True)
class MathTask:
    """A maths dataset: which columns hold the question and the worked solution, and how to read its gold."""

    name: str
    question: str
    solution: str
    gold: Callable[[str], str]
    default_data: Path | None
    default_fewshot: Path | None


TASKS = {
    "gsm8k": MathTask("gsm8k", "question", "answer", answers.gold_gsm8k, data.GSM8K_TEST, data.GSM8K_FEWSHOT),
    "metamath": MathTask("metamath", "query", "response", answers.gold_metamath, None, None),
}


def gold_answers(rows: list[dict], task: MathTask, source: str) -> list[str]:
    """Gold final answers, or an error naming the first row whose solution has none."""
    golds = []
    for i, row in enumerate(rows):
        try:
            golds.append(task.gold(row[task.solution]))
        except ValueError as e:
            raise UsageError(f"eval data {source!r}: row {i} (0-based), column {task.solution!r}: {e}") from None
    return golds


def conversations(rows: list[dict], task: MathTask, prompt_format: str, fewshot: list[dict] = ()) -> list[list[dict]]:
    """One chat per problem: the k exemplars as earlier user/assistant turns, then the question."""
    shots = []
    for ex in fewshot:
        shots.append({"role": "user", "content": prompt_format.format(question=ex[task.question])})
        shots.append({"role": "assistant", "content": answers.strip_calculator(ex[task.solution]).strip()})
    return [shots + [{"role": "user", "content": prompt_format.format(question=r[task.question])}] for r in rows]


def score(rows: list[dict], task: MathTask, golds: list[str], gens: list[Generation]) -> tuple[dict, list[dict]]:
    """(metrics, per-sample records). Pure: the same outputs always give the same numbers."""
    samples, correct, no_answer, unreadable = [], 0, 0, 0
    for i, (row, gold, gen) in enumerate(zip(rows, golds, gens, strict=True)):
        gold_parsed = answers.parse_gold(gold)
        extracted = answers.extract_answer(gen.text)
        ok = answers.is_correct(gold_parsed, extracted)
        correct += ok
        no_answer += not extracted.found
        unreadable += not gold_parsed
        samples.append(
            {
                "index": i,
                "question": row[task.question],
                "gold": gold,
                "output": gen.text,
                "extracted": extracted.text,
                "extraction": extracted.method,
                "correct": ok,
                "finish_reason": gen.finish_reason,
                "num_tokens": gen.num_tokens,
            }
        )
    n = len(samples)
    lo, hi = wilson_interval(correct, n)
    metrics = {
        "accuracy": correct / n,
        "accuracy_ci95": [lo, hi],
        "correct": correct,
        "n": n,
        "no_answer": no_answer,
        "truncated": sum(g.finish_reason == "length" for g in gens),
        "gold_unreadable": unreadable,
    }
    return metrics, samples


def run(
    task_name: str,
    opts: EvalOptions,
    *,
    data_source: str | None = None,
    data_config: str | None = None,
    split: str = "test",
    num_fewshot: int = 0,
    fewshot_source: str | None = None,
    prompt_format: str = "{question}",
) -> Path:
    """Evaluate ``opts.spec`` on a maths task; returns the output directory."""
    task = TASKS[task_name]
    if data_source is None:
        if task.default_data is None:
            raise UsageError(f"{task.name} needs --data FILE (a jsonl/json/parquet/csv file with columns "
                             f"{task.question!r} and {task.solution!r})")
        data_source = str(task.default_data)
    if "{question}" not in prompt_format:
        raise UsageError(f"--prompt-format {prompt_format!r} must contain the placeholder {{question}}")
    if num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    name = task.name if num_fewshot == 0 else f"{task.name}-{num_fewshot}shot"

    rows = data.load_rows(data_source, config=data_config, split=split)
    data.check_columns(rows, (task.question, task.solution), data_source, task.name)
    rows = rows[: opts.limit] if opts.limit else rows
    golds = gold_answers(rows, task, data_source)
    fewshot = []
    if num_fewshot:
        fewshot_source = fewshot_source or (str(task.default_fewshot) if task.default_fewshot else None)
        if fewshot_source is None:
            raise UsageError(f"--num-fewshot {num_fewshot} needs --fewshot-data FILE for {task.name}")
        fewshot = data.load_rows(fewshot_source, split="train")
        data.check_columns(fewshot, (task.question, task.solution), fewshot_source, f"{task.name} few-shot")
        if len(fewshot) < num_fewshot:
            raise UsageError(f"--num-fewshot {num_fewshot}: {fewshot_source!r} has only {len(fewshot)} rows")
        fewshot = fewshot[:num_fewshot]
    out = check_inputs(opts, name)

    settings = base_settings(opts, task.name)
    settings.update(
        name=name,
        data={**data.describe_source(data_source), "config": data_config, "split": split, "rows_evaluated": len(rows)},
        num_fewshot=num_fewshot,
        fewshot_data=data.describe_source(fewshot_source) if num_fewshot else None,
        prompt_format=prompt_format,
        answer_extraction="math-verify after the last '####' / 'answer is' anchor (ual.eval.answers)",
    )
    gens, facts = generate_for(opts, conversations(rows, task, prompt_format, fewshot), desc=name)
    settings.update(facts)
    metrics, samples = score(rows, task, golds, gens)
    results = {"task": task.name, "name": name, "model": settings["model"], "metrics": metrics}
    return write_results(out, opts, settings, results, samples)
