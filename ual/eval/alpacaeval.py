"""Answers to the 805 AlpacaEval instructions, written as AlpacaEval's ``model_outputs.json`` (a JSON list
of {instruction, output, generator, dataset}) for the ``alpaca_eval`` judge to compare with a reference.
The judging itself needs an API judge and happens outside this repository (docs/eval.md)."""

from __future__ import annotations

from pathlib import Path

from ual.eval import data, protocols
from ual.errors import UsageError
from ual.eval.generate import Generation
from ual.eval.runner import EvalOptions, base_settings, check_inputs, generate_for, write_results

MODEL_OUTPUTS = "model_outputs.json"
COLUMNS = ("instruction",)
OUTPUT_KEYS = ("instruction", "output", "generator", "dataset")


def model_outputs(rows: list[dict], gens: list[Generation], generator: str) -> list[dict]:
    """AlpacaEval's format. ``instruction`` is copied unchanged: the judge joins model and reference
    outputs on it."""
    return [
        {"instruction": r["instruction"], "output": g.text, "generator": generator, "dataset": str(r.get("dataset", "custom"))}
        for r, g in zip(rows, gens, strict=True)
    ]


def validate_model_outputs(records) -> None:
    """The shape ``alpaca_eval --model_outputs`` reads: a list of dicts with those four string keys."""
    if not isinstance(records, list) or not records:
        raise ValueError("model outputs must be a non-empty JSON list")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"record {i} is not an object")
        for key in OUTPUT_KEYS:
            if not isinstance(r.get(key), str):
                raise ValueError(f"record {i}: {key!r} must be a string, got {type(r.get(key)).__name__}")
    if len({r["generator"] for r in records}) != 1:
        raise ValueError("all records must name the same generator")


def length_stats(gens: list[Generation]) -> dict:
    n = len(gens)
    return {
        "n": n,
        "mean_output_chars": sum(len(g.text) for g in gens) / n,
        "mean_output_tokens": sum(g.num_tokens for g in gens) / n,
        "truncated": sum(g.finish_reason == "length" for g in gens),
        "empty_outputs": sum(not g.text for g in gens),
    }


def run(opts: EvalOptions, *, data_source: str | None = None, generator: str | None = None) -> Path:
    """Generate the answers; returns the output directory (model_outputs.json is in it)."""
    data_source = data_source or str(data.ALPACA_EVAL)
    rows = data.load_rows(data_source)
    data.check_columns(rows, COLUMNS, data_source, "alpacaeval")
    rows = rows[: opts.limit] if opts.limit else rows
    inputs = [r for r in rows if str(r.get("input") or "").strip()]
    if inputs:
        raise UsageError(f"eval data {data_source!r}: {len(inputs)} rows have an 'input' field; AlpacaEval "
                         "instructions are single prompts")
    generator = generator or opts.spec.label
    name = "alpacaeval-paper" if opts.protocol == "paper" else "alpacaeval"
    out = check_inputs(opts, name)

    settings = base_settings(opts, "alpacaeval")
    settings.update(name=name, data={**data.describe_source(data_source), "rows_evaluated": len(rows)}, generator=generator)
    if opts.protocol == "paper":  # the authors' plain-text '### User: / ### Assistant: ' prompt, no chat template
        settings["prompt_format"] = protocols.paper_dialogue("{instruction}")
        gens, facts = generate_for(opts, None, desc=name,
                                   raw_prompts=[protocols.paper_dialogue(r["instruction"]) for r in rows])
    else:
        convs = [[{"role": "user", "content": r["instruction"]}] for r in rows]
        gens, facts = generate_for(opts, convs, desc=name)
    settings.update(facts)
    records = model_outputs(rows, gens, generator)
    validate_model_outputs(records)
    results = {"task": "alpacaeval", "name": name, "model": settings["model"], "generator": generator,
               "model_outputs": MODEL_OUTPUTS, "metrics": length_stats(gens)}
    samples = [{**rec, "finish_reason": g.finish_reason, "num_tokens": g.num_tokens} for rec, g in zip(records, gens)]
    return write_results(out, opts, settings, results, samples, extra={MODEL_OUTPUTS: records})
