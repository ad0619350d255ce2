"""Command line of the eval tools; ``main(argv)`` takes the whole command, e.g.

    main(["eval", "gsm8k", "--model", "outputs/tiny", "--limit", "4"])
    main(["analyze", "clustering", "--model", "base=models/tiny-llama", "--model", "ual=outputs/tiny"])
    main(["report", "outputs/sft", "outputs/ual"])

Exit codes: 0 done; 2 bad input or usage (a message naming the path, column or flag; nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys

from ual.errors import UsageError

EVAL_TASKS = ("gsm8k", "metamath", "alpacaeval")


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a positive number, got {value}")
        return value

    return parse


def _model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="model directory or hub id")
    g.add_argument("--adapter", default=None, help="PEFT adapter directory to apply to --model")
    g.add_argument("--chat-template", default=None, help="Jinja chat template file (default: the model's own)")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype (auto: bfloat16 on a GPU, float32 on CPU)")
    g.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")


def _generation_flags(p: argparse.ArgumentParser, *, task: str, max_new_tokens: int) -> None:
    from ual.eval.protocols import PAPER_MAX_NEW_TOKENS

    g = p.add_argument_group("generation")
    g.add_argument("--protocol", default="ual", choices=("ual", "paper"),
                   help="ual: the question through the chat template, greedy (default); paper: the UAL authors' "
                        "plain-text prompt, temperature 0.8, top-k 200, prompt cut to 512 tokens, "
                        f"{PAPER_MAX_NEW_TOKENS[task]} new tokens" + (", and their substring metric beside "
                        "math-verify" if task != "alpacaeval" else "") + " (docs/eval.md)")
    g.add_argument("--backend", default="auto", choices=("auto", "transformers", "vllm"),
                   help="auto: vLLM if installed and a GPU is present (UNTESTED path), else transformers")
    g.add_argument("--batch-size", type=_positive_int("--batch-size"), default=8, help="prompts per batch (default: 8)")
    g.add_argument("--max-new-tokens", type=_positive_int("--max-new-tokens"), default=None,
                   help=f"generation length limit (default: {max_new_tokens}; --protocol paper: "
                        f"{PAPER_MAX_NEW_TOKENS[task]})")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: 0; --protocol paper: 0.8)")
    g.add_argument("--top-k", type=int, default=None, help="top-k sampling (with --temperature > 0; --protocol paper: 200)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with --temperature > 0)")
    g.add_argument("--paper-sampling", action="store_true",
                   help="only the UAL authors' decoding (temperature 0.8, top-k 200) with this project's prompt; "
                        "--protocol paper is their whole protocol")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop string (repeatable); generation also stops at EOS")
    g.add_argument("--seed", type=int, default=0, help="random seed of the sampling, recorded in settings.json (default: 0)")


def _run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--limit", type=_positive_int("--limit"), default=None, help="evaluate only the first N rows")
    g.add_argument("--output-dir", default=None,
                   help="where settings.json, results.json and samples.jsonl go (default: ADAPTER_OR_MODEL_DIR/eval/TASK)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ual", description="Evaluate and analyse UAL runs.")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="generate and score: gsm8k, metamath, alpacaeval")
    tasks = ev.add_subparsers(dest="task", required=True)
    for task, default_tokens, help_text in (
        ("gsm8k", 512, "GSM8K test accuracy (ships with the repo: data/eval/gsm8k_test.jsonl)"),
        ("metamath", 512, "accuracy on a MetaMath-style file (query/response, 'The answer is: X')"),
        ("alpacaeval", 1536, "answers to the 805 AlpacaEval instructions, as AlpacaEval's model_outputs.json"),
    ):
        p = tasks.add_parser(task, help=help_text, description=help_text)
        _model_flags(p)
        d = p.add_argument_group("data")
        if task == "alpacaeval":
            d.add_argument("--data", default=None, help="AlpacaEval instructions (default: data/eval/alpaca_eval.json)")
            d.add_argument("--generator-name", default=None, help="the 'generator' field (default: model[+adapter] folder name)")
        else:
            default = "data/eval/gsm8k_test.jsonl" if task == "gsm8k" else "required"
            d.add_argument("--data", default=None, required=task == "metamath",
                           help=f"local jsonl/json/parquet/csv file or hub id ({default})")
            d.add_argument("--data-config", default=None, help="hub dataset configuration, e.g. 'main' for openai/gsm8k")
            d.add_argument("--split", default="test", help="hub dataset split (default: test)")
            d.add_argument("--num-fewshot", type=int, default=0, help="k solved examples as earlier chat turns (default: 0)")
            d.add_argument("--fewshot-data", default=None,
                           help="file of solved examples (gsm8k default: data/eval/gsm8k_fewshot.jsonl)")
            d.add_argument("--prompt-format", default="{question}", help="user message; {question} is replaced (default: '{question}')")
        _generation_flags(p, task=task, max_new_tokens=default_tokens)
        _run_flags(p)

    an = sub.add_parser("analyze", help="analyses of trained models")
    kinds = an.add_subparsers(dest="analysis", required=True)
    cl = kinds.add_parser("clustering", help="token clustering of final hidden states (PCA + silhouette)",
                          description="The paper's token-clustering analysis over held-out text.")
    cl.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH[:ADAPTER]",
                    help="model to analyse (repeat for each); PATH[:ADAPTER] applies a PEFT adapter; NAME labels it")
    cl.add_argument("--data", default=None, help="held-out text: any ual.formats shape (default: data/eval/alpaca_eval.json); "
                    "--data-setting paper: a LIMA-format file")
    cl.add_argument("--data-setting", default="alpacaeval", choices=("alpacaeval", "paper"),
                    help="alpacaeval: whole conversations of --data, instruction + reference answer by default; paper: "
                         "the prompts alone of a LIMA-format file in the authors' format, up to 1024 tokens")
    cl.add_argument("--authors-selection", nargs=2, default=None, metavar=("LS", "UAL"),
                    help="also report the authors' selection: each model's mean over the 100 pairs with the largest "
                         "UAL/LS ratio (labels of the LS and UAL models)")
    cl.add_argument("--num-tokens", type=_positive_int("--num-tokens"), default=42, help="K most frequent next tokens (default: 42)")
    cl.add_argument("--max-samples", type=_positive_int("--max-samples"), default=300, help="held-out rows used (default: 300)")
    cl.add_argument("--max-length", type=_positive_int("--max-length"), default=None,
                    help="tokens per row (default: 512; --data-setting paper: 1024)")
    cl.add_argument("--max-per-token", type=_positive_int("--max-per-token"), default=1000,
                    help="positions kept per token, drawn at random (default: 1000)")
    cl.add_argument("--batch-size", type=_positive_int("--batch-size"), default=8, help="rows per forward pass (default: 8)")
    cl.add_argument("--chat-template", default=None, help="render conversations with this template for every model")
    cl.add_argument("--plain", action="store_true", help="render conversations as '### User: ... ### Assistant: ...' text")
    cl.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    cl.add_argument("--device", default="auto")
    cl.add_argument("--seed", type=int, default=0)
    cl.add_argument("--output-dir", default="outputs/clustering", help="default: outputs/clustering")
    cl.add_argument("--overwrite", action="store_true")
    cl.add_argument("--no-progress", action="store_true")

    rp = sub.add_parser("report", help="one table of every run's eval metrics with its smoothing settings")
    rp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training output directories (with ual_smoothing.json)")
    rp.add_argument("--output-dir", default=None, help="also write report.md, report.csv and report.png here")
    rp.add_argument("--overwrite", action="store_true")
    rp.add_argument("--all-metrics", action="store_true", help="every metric in the table, not only the headline ones")
    ts = sub.add_parser("testset", help="build an evaluation set the way the UAL authors did")
    which = ts.add_subparsers(dest="testset", required=True)
    mm = which.add_parser("metamath", help="the authors' MetaMath test set: the last 1,030 rows of MetaMathQA's "
                          "train split, with its overlap with your training data")
    mm.add_argument("source", help="a local MetaMathQA file (e.g. MetaMathQA-395K.json from meta-math/MetaMathQA)")
    mm.add_argument("--output", "-o", required=True, help="where to write the test set (.jsonl)")
    mm.add_argument("--train", action="append", default=[], metavar="FILE",
                    help="a training file to check for overlap (repeatable): any ual.formats shape")
    mm.add_argument("--overwrite", action="store_true", help="replace an existing output and overlap report")
    return parser


def _testset(args) -> int:
    from ual.eval.testsets import build_metamath

    done = build_metamath(args.source, args.output, args.train, overwrite=args.overwrite)
    print(f"wrote {done['rows']} rows to {args.output} (gold: the response's last word, as the authors; "
          f"'gold' parsed after 'The answer is:', unreadable in {done['unparsed_gold']})")
    for report in done["reports"]:
        near = ", ".join(f"{k.replace('cosine>=', 'cosine >= ')}: {v}" for k, v in report["near"].items())
        same = (f", same original_question: {report['same_original_question']}"
                if "same_original_question" in report else "")
        print(f"overlap with {report['train'].get('path', report['train'].get('hub_id'))}: exact {report['exact']} "
              f"of {report['test_rows']}, near-duplicates ({near}){same}")
    if done["overlap_file"]:
        print(f"overlap details (closest pairs) in {done['overlap_file']}")
    return 0


def generation_settings(args):
    """Decoding settings from the flags: the protocol's defaults (``paper``: the authors'), explicit flags on top."""
    from ual.eval.generate import GenerationSettings
    from ual.eval.protocols import PAPER_DECODING, PAPER_MAX_NEW_TOKENS, PAPER_MAX_PROMPT_TOKENS

    paper = args.protocol == "paper"
    temperature, top_k = args.temperature or 0.0, args.top_k
    if args.paper_sampling or paper:
        temperature = PAPER_DECODING["temperature"] if args.temperature is None else args.temperature
        top_k = PAPER_DECODING["top_k"] if args.top_k is None else args.top_k
    if temperature == 0 and (top_k is not None or args.top_p is not None):
        raise UsageError("--top-k/--top-p apply to sampling: also pass --temperature > 0 (or --paper-sampling)")
    default_tokens = 1536 if args.task == "alpacaeval" else 512  # the defaults the parser shows
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens or (PAPER_MAX_NEW_TOKENS[args.task] if paper else default_tokens),
        temperature=temperature, top_k=top_k, top_p=args.top_p, batch_size=args.batch_size, seed=args.seed,
        stop_strings=list(args.stop), max_prompt_tokens=PAPER_MAX_PROMPT_TOKENS if paper else None,
    )


def _eval(args, argv: list[str]) -> int:
    from ual.eval import alpacaeval, maths
    from ual.eval.models import ModelSpec
    from ual.eval.runner import EvalOptions

    settings = generation_settings(args)
    opts = EvalOptions(
        spec=ModelSpec.of(args.model, args.adapter), generation=settings, output_dir=args.output_dir,
        overwrite=args.overwrite, limit=args.limit, chat_template=args.chat_template, dtype=args.dtype,
        device=args.device, backend=args.backend, progress=not args.no_progress, command=["ual", *argv],
        protocol=args.protocol,
    )
    if args.task == "alpacaeval":
        out = alpacaeval.run(opts, data_source=args.data, generator=args.generator_name)
    else:
        out = maths.run(
            args.task, opts, data_source=args.data, data_config=args.data_config, split=args.split,
            num_fewshot=args.num_fewshot, fewshot_source=args.fewshot_data, prompt_format=args.prompt_format,
        )
    _print_summary(out)
    return 0


def _print_summary(out) -> None:
    import json

    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    if "accuracy_math_verify" in m:
        lo, hi = m["accuracy_ci95"]
        mlo, mhi = m["accuracy_math_verify_ci95"]
        print(f"{results['name']}: substring accuracy (the authors') {100 * m['accuracy']:.1f}% [{100 * lo:.1f}, "
              f"{100 * hi:.1f}] ({m['correct']}/{m['n']}); math-verify on the same outputs "
              f"{100 * m['accuracy_math_verify']:.1f}% [{100 * mlo:.1f}, {100 * mhi:.1f}]; results in {out}")
    elif "accuracy" in m:
        lo, hi = m["accuracy_ci95"]
        print(f"{results['name']}: accuracy {100 * m['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
              f"({m['correct']}/{m['n']}); results in {out}")
    else:
        print(f"{results['name']}: {m['n']} answers in {out / results.get('model_outputs', 'results.json')}")


def _clustering(args, argv: list[str]) -> int:
    import json

    from ual.eval import clustering
    from ual.eval.models import ModelSpec

    settings = clustering.ClusteringSettings(
        num_tokens=args.num_tokens, max_samples=args.max_samples,
        max_length=args.max_length or (1024 if args.data_setting == "paper" else 512),
        max_per_token=args.max_per_token, batch_size=args.batch_size, seed=args.seed, plain=args.plain,
        data_setting=args.data_setting,
    )
    out = clustering.run(
        [ModelSpec.parse(m) for m in args.model], settings, data_source=args.data, output_dir=args.output_dir,
        overwrite=args.overwrite, chat_template=args.chat_template, dtype=args.dtype, device=args.device,
        progress=not args.no_progress, command=["ual", *argv],
        selection=tuple(args.authors_selection) if args.authors_selection else None,
    )
    print((out / "summary.csv").read_text(), end="")
    picked = json.loads((out / "results.json").read_text()).get("authors_selection")
    if picked:
        means = ", ".join(f"{label} {value:.3f}" for label, value in picked["mean"].items())
        print(f"{picked['selection']}: {means}")
    print(f"clustering results in {out}")
    return 0


def _report(args, argv: list[str]) -> int:
    from ual.eval import report

    table = report.run(args.runs, output_dir=args.output_dir, overwrite=args.overwrite, all_metrics=args.all_metrics)
    print(table, end="")
    if args.output_dir:
        print(f"\nreport.md, report.csv and report.png in {args.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``eval {gsm8k,metamath,alpacaeval}``, ``analyze clustering`` or ``report``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return int(e.code or 0)
    try:
        if args.command == "eval":
            return _eval(args, argv)
        if args.command == "testset":
            return _testset(args)
        if args.command == "analyze":
            return _clustering(args, argv)
        return _report(args, argv)
    except UsageError as e:
        print(f"ual {args.command}: error: {e}", file=sys.stderr)
        return 2
