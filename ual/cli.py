"""The ``ual`` console command: ``ual train`` (through accelerate), ``ual score``, ``ual eval``, ``ual analyze``, ``ual report``.

Each subcommand owns its parser (``ual.train`` is TRL's TrlParser, ``ual.score`` an argparse parser), so this
module only picks one by name.
"""

from __future__ import annotations

import sys

USAGE = """usage: ual COMMAND ...

commands:
  train RECIPE [OVERLAY ...] [--key value ...] [--dry-run]
                                        train with per-sample smoothing through `accelerate launch`
                                        (the recipe's accelerate_config / num_processes; printed first);
                                        RECIPE is a file or a shipped recipe's name (`ual train tiny`)
  score INPUT --output OUTPUT [...]     elicit per-sample uncertainty from a judge (same as python -m ual.score)
  eval {gsm8k,metamath,alpacaeval} --model PATH [...]
                                        evaluate a trained model or adapter (docs/eval.md)
  analyze clustering --model A --model B [...]
                                        the paper's token-clustering analysis (silhouettes, plots)
  report RUN_DIR [RUN_DIR ...]          one table of every run's eval results and smoothing
  merge ADAPTER_DIR --output DIR        fold a LoRA run's adapter into its base model (tokenizer, card, smoothing kept)
  testset metamath METAMATHQA --output FILE [--train FILE]
                                        the authors' MetaMath test set, and its overlap with your training data

`ual COMMAND --help` shows a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        if {"-h", "--help", "--help-all"} & set(rest):
            from ual.train import main as train

            train(rest)
            return 0
        from ual.launch import main as launch

        return launch(rest)
    if command in ("eval", "analyze", "report", "testset"):
        from ual.eval.cli import main as evaluate

        return evaluate(argv)
    if command == "merge":
        from ual.merge import main as merge

        return merge(rest)
    if command == "score":
        from ual.score.cli import main as score

        return score(rest)
    print(f"ual: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
