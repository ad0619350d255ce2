"""``ual score``: give every training sample an uncertainty score (0-99) from a judge.

The scores feed ``ual.mapping`` (score -> per-sample label smoothing). Modules, one job each:
``rubric`` (what the judge is asked), ``parse`` (what its reply means), ``data`` (reading and
writing datasets), ``cache`` (resumable, lossless results), ``pacing`` (retry/backoff/rate limits),
``judge_openai`` / ``judge_hf`` / ``nll`` (the scorers), ``runner`` (orchestration),
``summary`` (what the user sees at the end) and ``cli``.
"""

from ual.score.parse import ScoreParseError, parse_score
from ual.score.rubric import PROMPT_VERSION

__all__ = ["PROMPT_VERSION", "ScoreParseError", "parse_score"]
