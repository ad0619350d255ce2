"""``ual score INPUT --output OUTPUT``: the command line, and the one function that runs it.

Wiring into another parser: ``add_parser(subparsers)`` registers ``score`` and sets
``func=run`` on its namespace, so a parent CLI calls ``args.func(args)``; ``main(argv)`` is the
standalone entry point (``python -m ual.score``). Exit codes: 0 done; 1 some samples failed
(output written, failures listed) and ``--allow-failures`` not given; 2 bad input/usage or the
judge cannot be used (nothing written but the cache); 130 interrupted (the cache keeps every answer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

from ual.score import data
from ual.errors import UsageError
from ual.files import OutputLock, remove_stale_temps, same_file, write_atomic
from ual.score.cache import CacheWriter, read_cache, repair_cache
from ual.score.redact import Redactor
from ual.score.rubric import RUBRICS, SCORE_SCHEMA, Rubric, TemplateError, load_rubric, render_sample
from ual.score.runner import PROVENANCE_COLUMNS, Outcome, SampleError, assemble, plan_samples
from ual.score.summary import RunStats, format_summary, plot_histograms

JUDGES = ("openai", "hf", "model-nll", "prior")
EXIT_OK, EXIT_FAILED_SAMPLES, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
DESCRIPTION = "Score every sample's uncertainty (0-99) with a judge; write the dataset back with an 'uncertainty' column."


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``score`` arguments to ``p``."""
    p.add_argument("input", help="dataset: local .jsonl/.json/.parquet file, a local dataset folder, or a hub id")
    p.add_argument("--output", "-o", required=True, help="where to write the scored dataset (.jsonl or .parquet)")
    src = p.add_argument_group("input")
    src.add_argument("--split", default="train", help="split of a hub dataset / dataset folder (default: train)")
    src.add_argument("--config", default=None, help="configuration (subset) name of a hub dataset")
    src.add_argument("--format", default="auto", help="dataset shape (see ual.formats; default: auto-detect)")
    src.add_argument("--source", default=None, help="source label for rows without a 'source' column (default: file stem / hub id)")
    src.add_argument("--limit", type=int, default=None, help="score only the first N rows (output has those rows)")
    j = p.add_argument_group("judge")
    j.add_argument("--judge", choices=JUDGES, default="openai",
                   help="openai: any OpenAI-compatible endpoint; hf: a local transformers model as judge; "
                        "model-nll: a local model's own loss; prior: the deterministic prior (default: openai)")
    j.add_argument("--model", default=None, help="judge model name / local model path (env UAL_JUDGE_MODEL)")
    j.add_argument("--base-url", default=None, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (env OPENAI_BASE_URL)")
    j.add_argument("--api-key", default=None, help="API key (prefer env OPENAI_API_KEY: command lines are visible to other users)")
    j.add_argument("--rubric", choices=RUBRICS, default="ual",
                   help="ual: this project's rubric (default); paper: the UAL authors' judge prompt verbatim, read "
                        "from their file (--rubric-file), sent with their settings (temperature 0, top_p 0.9, "
                        "max_tokens 4096)")
    j.add_argument("--rubric-file", default=None,
                   help="--rubric paper: the authors' benchmark/sample/gpt4_ent_score.py (see docs/score.md)")
    j.add_argument("--prompt-template", default=None, help="your own rubric file with a {sample} placeholder")
    j.add_argument("--temperature", type=float, default=None, help="sampling temperature sent to the judge (default: 0)")
    j.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling top_p sent to the judge (default: not sent; --rubric paper: 0.9)")
    j.add_argument("--response-format", choices=("text", "json"), default="text",
                   help="json: ask an OpenAI-compatible judge for {\"score\": N} through a JSON schema (structured "
                        "outputs; vLLM's guided decoding), read by the same parser (default: text)")
    j.add_argument("--max-tokens", type=int, default=None,
                   help="reply length limit (openai: not sent unless given, --rubric paper: 4096; hf: default 16 "
                        "new tokens)")
    n = p.add_argument_group("requests (openai judge)")
    n.add_argument("--batch", action="store_true",
                   help="send the requests through the OpenAI Batch API (half the price, answers within 24 h): "
                        "upload, submit, poll, download; an interrupted run resumes its batch (docs/score.md)")
    n.add_argument("--batch-poll", type=float, default=30.0, help="--batch: seconds between status checks (default: 30)")
    n.add_argument("--concurrency", type=int, default=16, help="requests in flight at most (default: 16)")
    n.add_argument("--rpm", type=float, default=None, help="requests per minute at most (default: no limit)")
    n.add_argument("--timeout", type=float, default=60.0, help="seconds per request before it counts as timed out (default: 60)")
    n.add_argument("--max-retries", type=int, default=5, help="retries of a request after a timeout, 429 or 5xx (default: 5)")
    n.add_argument("--backoff-base", type=float, default=1.0, help="first retry waits about this long in seconds, doubling after (default: 1)")
    n.add_argument("--backoff-max", type=float, default=60.0, help="longest backoff between retries in seconds (default: 60)")
    m = p.add_argument_group("local models (hf, model-nll)")
    m.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    m.add_argument("--batch-size", type=int, default=8, help="samples per forward/generate batch (default: 8)")
    m.add_argument("--max-length", type=int, default=2048, help="model-nll: tokens per sample at most (default: 2048)")
    m.add_argument("--nll-center", type=float, default=50.0, help="model-nll: score of a sample with average loss (default: 50)")
    m.add_argument("--nll-beta", type=float, default=1.0, help="model-nll: spread of the scores around the center (default: 1)")
    o = p.add_argument_group("run")
    o.add_argument("--cache", default=None, help="results cache (default: OUTPUT.cache.jsonl); rerun to resume")
    o.add_argument("--allow-failures", action="store_true", help="exit 0 even if some samples could not be scored")
    o.add_argument("--dry-run", action="store_true", help="show the first prompts and the request count; send nothing")
    o.add_argument("--dry-run-samples", type=int, default=2, help="prompts shown by --dry-run (default: 2)")
    o.add_argument("--target-mean", type=float, default=0.1, help="target mean smoothing for the summary's mapped statistics (default: 0.1)")
    o.add_argument("--plot", default=None, help="also write the score histograms as a PNG here")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``score`` on a parent parser's subparsers; the parent then calls ``args.func(args)``."""
    p = subparsers.add_parser("score", help="score samples' uncertainty with a judge", description=DESCRIPTION)
    configure_parser(p)
    p.set_defaults(func=run)
    return p


def main(argv=None) -> int:
    """Standalone entry point: ``python -m ual.score INPUT --output OUTPUT ...``."""
    parser = configure_parser(argparse.ArgumentParser(prog="ual score", description=DESCRIPTION))
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run ``ual score`` for parsed arguments; returns the exit code. Errors are printed, not raised."""
    from ual.score.judge_openai import JudgeFatalError
    from ual.score.local_model import LocalModelError

    secret = args.api_key or os.environ.get("OPENAI_API_KEY") or ""
    try:
        return _run(args)
    except (UsageError, data.DataError, TemplateError, SampleError, LocalModelError, JudgeFatalError) as exc:
        message = Redactor(secret)(str(exc))
        print(f"ual score: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ual score: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _check_args(args) -> None:
    if args.batch and args.judge != "openai":
        raise UsageError(f"--batch sends the requests through the OpenAI Batch API; --judge {args.judge} has none")
    if args.batch_poll <= 0:
        raise UsageError("--batch-poll must be positive")
    if args.response_format == "json" and args.judge != "openai":
        raise UsageError(f"--response-format json asks an OpenAI-compatible server for structured output; --judge "
                         f"{args.judge} has none")
    for name in ("concurrency", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("timeout", "backoff_base", "backoff_max"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    if args.max_retries < 0:
        raise UsageError("--max-retries must be 0 or more")
    if args.rpm is not None and args.rpm <= 0:
        raise UsageError("--rpm must be positive")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")


def _run(args) -> int:
    _check_args(args)
    model = args.model or os.environ.get("UAL_JUDGE_MODEL")
    if args.judge != "prior" and not model:
        raise UsageError(f"--judge {args.judge} needs a model: pass --model or set UAL_JUDGE_MODEL")
    out_path = Path(os.path.expanduser(args.output))
    cache_path = Path(os.path.expanduser(args.cache)) if args.cache else Path(str(out_path) + ".cache.jsonl")
    rows = data.read_rows(args.input, split=args.split, config=args.config)
    if args.limit is not None:
        rows = rows[: args.limit]
    formats = _resolve_formats(args.format, rows, args.input)
    _check_rows(rows, formats)
    replaced = sorted({c for row in rows for c in PROVENANCE_COLUMNS if c in row})
    if replaced:
        print(f"ual score: warning: the input already has {', '.join(replaced)}; this run replaces them", file=sys.stderr)
    default_source = args.source or data.default_source(args.input)
    sources = [row["source"] if isinstance(row.get("source"), str) else default_source for row in rows]
    output = None
    with contextlib.ExitStack() as held:
        if not args.dry_run:  # everything that could fail after paying is checked now, under the output's lock
            output = data.check_output(args.output, inputs=(args.input,))
            data.check_rows_writable(rows, output, extra=dict.fromkeys(PROVENANCE_COLUMNS, "x") | {"uncertainty": 1.0})
            targets = [output] if args.judge == "prior" else [output, cache_path]
            if args.judge != "prior" and (same_file(cache_path, args.input) or same_file(cache_path, output)):
                raise UsageError(f"--cache {cache_path} is the input or the output file; choose another cache path")
            for target in targets:
                lock = held.enter_context(OutputLock(target, "ual score"))
                if lock.took_over:
                    print(f"ual score: note: took over {lock.path}, left by a run that ended without releasing it "
                          f"({lock.took_over})", file=sys.stderr)
            for stale in [*remove_stale_temps(output), *remove_stale_temps(Path(str(output) + ".failures.jsonl"))]:
                print(f"ual score: note: removed {stale}, a temporary file left by an interrupted write", file=sys.stderr)
            if args.judge != "prior" and (dropped := repair_cache(cache_path)):
                print(f"ual score: note: cache {cache_path}: removed {dropped} unreadable line(s) left by an interrupted "
                      "write; those samples are asked again", file=sys.stderr)
        if args.judge == "prior":
            return _run_prior(args, rows, sources, output)
        return _run_judge(args, model, rows, formats, sources, output, cache_path)


def _check_rows(rows: list[dict], formats: list[str]) -> None:
    """Every row has the fields its format reads (before anything is sent)."""
    from ual.formats import row_problem

    for index, (row, fmt) in enumerate(zip(rows, formats)):
        problem = row_problem(row, fmt)
        if problem is not None:
            raise SampleError(f"row {index} (0-based), {problem} (format {fmt!r})")


def _run_judge(args, model, rows, formats, sources, output, cache_path) -> int:
    if args.judge == "model-nll":
        from ual.score.nll import NLL_VERSION, nll_version

        # The cached NLL does not depend on center/beta (applied afterwards), only on truncation.
        rubric = Rubric("model-nll", "{sample}", f"{NLL_VERSION}:max_length={args.max_length}", "{sample}",
                        render_sample)  # the cached NLL depends on truncation only, not on center/beta
        prompt_version = nll_version(args.nll_center, args.nll_beta)
        method = f"model-nll:{model}"
    else:
        rubric = load_rubric(args.rubric, rubric_file=args.rubric_file, prompt_template=args.prompt_template)
        prompt_version = rubric.version
        method = f"judge:{args.judge}:{model}"
        _fill_request_defaults(args, rubric)
    key_version = rubric.version
    samples, row_keys = plan_samples(rows, formats, rubric, method)
    cache = read_cache(cache_path)
    outcomes = {s.key: Outcome.from_record(rec) for s in samples if (rec := _cached(cache, s.key, args.judge))}
    todo = [s for s in samples if s.key not in outcomes]
    stats = RunStats(rows=len(rows), unique=len(samples), cached=len(outcomes),
                     rubric=None if args.judge == "model-nll" else rubric.name,
                     request=_request_settings(args))

    if args.dry_run:
        _print_dry_run(args, method, prompt_version, samples, todo, stats)
        return EXIT_OK

    _ask(args, model, method, key_version, formats, rows, todo, outcomes, cache_path, stats)
    try:
        return _finish(args, output, rows, sources, row_keys, samples, outcomes, method, prompt_version, stats)
    except data.DataError as exc:
        raise data.DataError(f"{exc}. Every answer is kept in {cache_path}: pass --cache {cache_path} "
                             "when you rerun with another output name") from None


def _fill_request_defaults(args, rubric: Rubric) -> None:
    """The rubric's call settings (paper: the authors' temperature 0, top_p 0.9, max_tokens 4096) where the user
    gave none; the hf judge keeps its own short reply limit."""
    defaults = {"temperature": 0.0, **rubric.request}
    for name in ("temperature", "top_p") + (("max_tokens",) if args.judge == "openai" else ()):
        if getattr(args, name) is None and name in defaults:
            setattr(args, name, defaults[name])


def _request_settings(args) -> dict:
    """What each request carries besides the messages (for the summary and the dry run)."""
    if args.judge == "hf":
        return {"max_new_tokens": args.max_tokens or 16}  # greedy: no temperature or top_p
    if args.judge != "openai":
        return {}
    sent = {name: getattr(args, name) for name in ("temperature", "top_p", "max_tokens") if getattr(args, name) is not None}
    return {**sent, **({"response_format": "json"} if args.response_format == "json" else {})}


def _resolve_formats(fmt: str, rows: list[dict], where: str) -> list[str]:
    """The format of every row: one for the whole dataset when its columns say so; with ``auto``, a
    file mixing known shapes (e.g. a union written to parquet, where absent columns read back as null)
    is also fine, each row then read by the shape of its non-null columns."""
    from ual.formats import detect_format, resolve_format

    try:
        return [resolve_format(fmt, data.common_columns(rows), where)] * len(rows)
    except ValueError as exc:
        if fmt != "auto":
            raise UsageError(str(exc)) from None
        formats = [detect_format(k for k, v in row.items() if v is not None) for row in rows]
        unknown = next((i for i, f in enumerate(formats) if f is None), None)
        if unknown is not None:
            raise UsageError(f"{exc} (row {unknown} has columns {sorted(rows[unknown])})") from None
        return formats


def _cached(cache: dict, key: str, judge: str) -> dict | None:
    rec = cache.get(key)
    if rec is None:
        return None
    if judge == "model-nll":
        return rec if rec.get("nll") is not None else None
    return rec if rec.get("score") is not None else None


def _api_key(args) -> str:
    key = args.api_key or os.environ.get("OPENAI_API_KEY")
    if key:
        return key
    if args.base_url or os.environ.get("OPENAI_BASE_URL"):
        return "EMPTY"  # local OpenAI-compatible servers (vLLM, llama.cpp) accept any key
    raise UsageError("no API key: set OPENAI_API_KEY (or pass --api-key), or point --base-url at a server that needs none")


def _ask(args, model, method, prompt_version, formats, rows, todo, outcomes, cache_path, stats) -> None:
    """Ask the judge about every sample in ``todo``; each outcome is cached the moment it exists."""
    from tqdm import tqdm

    if not todo:
        return
    ask = _make_asker(args, model, formats, rows, cache_path, answered=set(outcomes))  # a missing key or an unloadable model fails here, before anything
    bar = tqdm(total=len(todo), desc="scoring", unit="sample", file=sys.stderr, disable=args.no_progress,
               mininterval=0.5, dynamic_ncols=True)
    bar.set_postfix(failed=0)

    with CacheWriter(cache_path) as writer:
        def on_outcome(out: Outcome) -> None:
            if out.replies or out.nll is not None:
                writer.append(out.record(method, prompt_version))
            outcomes[out.key] = out
            stats.requests += len(out.replies)
            stats.reminders += int(out.reminded)
            if out.error is not None:
                stats.failed += 1
                bar.set_postfix(failed=stats.failed, refresh=False)
            bar.update(1)

        try:
            stats.retries = ask(todo, on_outcome)
        except BaseException:
            bar.close()
            print(f"ual score: stopped after {len(outcomes) - stats.cached} of {len(todo)} sample(s); every answer "
                  f"received is in {cache_path}: rerun the same command to ask only for the rest", file=sys.stderr)
            raise
        bar.close()


def _make_asker(args, model, formats, rows, cache_path, answered=frozenset()):
    """``ask(samples, on_outcome) -> transient retries`` for the chosen judge, set up and checked."""
    if args.judge == "openai" and args.batch:
        return _batch_asker(args, model, _api_key(args), cache_path, answered)
    if args.judge == "openai":
        api_key = _api_key(args)
        return lambda todo, on_outcome: asyncio.run(_ask_openai(args, model, api_key, todo, on_outcome))
    from ual.score import runner

    if args.judge == "hf":
        from ual.score.judge_hf import HFJudge

        judge = HFJudge(model, device=args.device, batch_size=args.batch_size, max_new_tokens=args.max_tokens or 16)
        return lambda todo, on_outcome: runner.run_batch_judge(judge, todo, on_outcome, args.batch_size) or 0
    from ual.formats import turns
    from ual.score.nll import NLLScorer

    scorer = NLLScorer(model, device=args.device, batch_size=args.batch_size, max_length=args.max_length)

    def messages_of(sample):
        return turns(rows[sample.rows[0]], formats[sample.rows[0]])

    return lambda todo, on_outcome: runner.run_nll(scorer, todo, messages_of, on_outcome, args.batch_size) or 0


def _openai_judge(args, model, api_key):
    from ual.score.judge_openai import OpenAIJudge
    from ual.score.pacing import Pacer, RetryPolicy

    return OpenAIJudge(
        model,
        base_url=_base_url(args),
        api_key=api_key,
        timeout=args.timeout,
        retry=RetryPolicy(args.max_retries, args.backoff_base, args.backoff_max),
        pacer=Pacer(args.rpm),
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        response_format=SCORE_SCHEMA if args.response_format == "json" else None,
        concurrency=args.concurrency,
    )


def _base_url(args) -> str | None:
    return args.base_url or os.environ.get("OPENAI_BASE_URL") or None


def _batch_asker(args, model, api_key, cache_path, answered):
    """``ask`` for --batch: the same request bodies and parser, through the Batch API (ual.score.batch)."""
    from ual.score.batch import BatchClient, run_batch_api

    client = BatchClient(_openai_judge(args, model, api_key), api_key, _base_url(args), timeout=args.timeout,
                         max_retries=args.max_retries, poll_seconds=args.batch_poll)
    shown = {"last": None}

    def progress(done, total, status):
        if not args.no_progress and (done, status) != shown["last"]:
            shown["last"] = (done, status)
            print(f"batch: {done}/{total} request(s) done ({status})", file=sys.stderr, flush=True)

    def ask(todo, on_outcome):
        state = Path(str(cache_path) + ".batch.json")  # beside the cache, under its lock
        run_batch_api(client, todo, on_outcome, state, progress, answered,
                      say=lambda m: print(f"ual score: {m}", file=sys.stderr))
        return 0

    return ask


async def _ask_openai(args, model, api_key, todo, on_outcome) -> int:
    from ual.score.runner import run_async_judge

    judge = _openai_judge(args, model, api_key)
    try:
        await run_async_judge(judge, todo, on_outcome, args.concurrency)
    finally:
        await judge.aclose()
    return judge.retries


def _print_dry_run(args, method, prompt_version, samples, todo, stats) -> None:
    print("dry run: nothing is sent")
    print(f"judge: {method}  rubric: {stats.rubric}  prompt version: {prompt_version}  request settings: "
          f"{stats.request or 'none'}")
    print(f"rows: {stats.rows}  distinct samples: {stats.unique}  in cache: {stats.cached}  "
          f"requests to send: {len(todo)}" + (" (plus one reminder per unreadable reply)" if args.judge != "model-nll" else ""))
    for i, sample in enumerate(todo[: args.dry_run_samples], 1):
        rows = ", ".join(str(r) for r in sample.rows[:10])
        print(f"----- prompt {i} of {len(todo)} (rows {rows}) -----")
        print(sample.prompt)
    if todo:
        print("----- end -----")


def _finish(args, output, rows, sources, row_keys, samples, outcomes, method, prompt_version, stats) -> int:
    """Turn outcomes into scored rows, write output + failures atomically, print the summary."""
    by_key = {s.key: s for s in samples}
    stats.scored = sum(1 for o in outcomes.values() if not o.cached and o.error is None)
    if args.judge == "model-nll":
        from ual.score.nll import nll_to_scores

        measured = [i for i, k in enumerate(row_keys) if outcomes[k].nll is not None]
        mapped = nll_to_scores([outcomes[row_keys[i]].nll for i in measured], args.nll_center, args.nll_beta)
        row_scores = [None] * len(rows)
        for i, score in zip(measured, mapped):
            row_scores[i] = round(float(score), 4)
        row_replies = [None if outcomes[k].nll is None else f"nll={outcomes[k].nll:.6f}" for k in row_keys]
    else:
        row_scores = [outcomes[k].score for k in row_keys]
        row_replies = [outcomes[k].replies[-1] if outcomes[k].replies else None for k in row_keys]
    failures = [
        {"key": k, "rows": by_key[k].rows, "sources": sorted({sources[r] for r in by_key[k].rows}),
         "error": o.error, "replies": o.replies, "sample": by_key[k].rendered}
        for k, o in outcomes.items() if o.error is not None
    ]
    stats.failed = len(failures)
    stats.failed_rows = sum(len(f["rows"]) for f in failures)
    stats.usage = {}
    for o in outcomes.values():
        if not o.cached:
            for name, value in o.usage.items():
                stats.usage[name] = stats.usage.get(name, 0) + value
    return _write_and_report(args, output, rows, sources, row_scores, row_replies, method, prompt_version, stats, failures)


def _write_and_report(args, output, rows, sources, row_scores, row_replies, method, prompt_version, stats, failures) -> int:
    data.write_rows(output, assemble(rows, row_scores, row_replies, method, prompt_version, stats.rubric))
    failures_path = Path(str(output) + ".failures.jsonl")
    if failures:
        write_atomic(failures_path, lambda tmp: data.write_jsonl(tmp, failures))
    elif failures_path.exists():
        failures_path.unlink()  # a stale list from an earlier run would mislead
    if args.plot:
        try:
            plot_histograms(args.plot, row_scores, sources)
        except (OSError, ValueError) as exc:
            print(f"ual score: warning: cannot write the plot {args.plot!r}: {exc}", file=sys.stderr)
    print(f"wrote {len(rows)} rows to {output}" + (f"; histogram plot: {args.plot}" if args.plot else ""))
    print(format_summary(stats, row_scores, sources, args.target_mean, failures, failures_path if failures else None))
    if failures and not args.allow_failures:
        print(f"ual score: {stats.failed} sample(s) could not be scored (see {failures_path}); "
              "rerun to ask them again, or pass --allow-failures", file=sys.stderr)
        return EXIT_FAILED_SAMPLES
    return EXIT_OK


def _run_prior(args, rows, sources, output) -> int:
    """The deterministic prior (``ual.prior``): no judge, no cache, no requests."""
    try:
        from ual.prior import PRIOR_METHOD, prior_uncertainty
    except ImportError as exc:
        raise UsageError(f"--judge prior needs ual.prior ({exc})") from None
    stats = RunStats(rows=len(rows), unique=len(rows))
    if args.dry_run:
        print(f"dry run: nothing is sent\njudge: {PRIOR_METHOD} (local rules)  rows: {len(rows)}  requests to send: 0")
        return EXIT_OK
    row_scores, failures = [], []
    for i, (row, source) in enumerate(zip(rows, sources)):
        try:
            row_scores.append(float(prior_uncertainty(row, source)))
        except Exception as exc:  # a rule that cannot handle a row fails that row, visibly
            row_scores.append(None)
            failures.append({"key": None, "rows": [i], "sources": [source], "error": f"{type(exc).__name__}: {exc}",
                             "replies": [], "sample": None})
    stats.scored = len(rows) - len(failures)
    stats.failed = stats.failed_rows = len(failures)
    return _write_and_report(args, output, rows, sources, row_scores, [None] * len(rows), PRIOR_METHOD, None, stats,
                             failures)
