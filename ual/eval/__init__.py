"""Evaluation and analysis of UAL runs: GSM8K / MetaMath accuracy, AlpacaEval answers, the paper's
token-clustering analysis, and a side-by-side report of SFT / LS / UAL runs.

Entry point: ``ual.eval.cli.main(["eval", "gsm8k", ...])`` (also ``python -m ual.eval ...``).
Every command writes ``settings.json`` next to its results, and only moves the output directory into
place once everything is written, so a failed run never leaves something that looks like a result.
"""

from ual.errors import UsageError

__all__ = ["UsageError"]
