"""The one exception for the user's own mistakes (a recipe key, a data row, a flag, a path).

Every ``ual`` command prints it as a single ``error:`` line without a traceback (``UAL_DEBUG=1`` shows
the traceback); anything else is a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations

import os
import sys


class UsageError(ValueError):
    """Bad input from the user, with a message that names the file, row, column, key or flag."""


def debug_requested() -> bool:
    """``UAL_DEBUG=1``: show tracebacks for user errors too."""
    return os.environ.get("UAL_DEBUG", "").lower() not in ("", "0", "false", "no")


def report(command: str, exc: BaseException) -> int:
    """Print ``<command>: error: <message>`` and return the exit code of a usage error, 2."""
    print(f"{command}: error: {exc}", file=sys.stderr)
    return 2
