"""Keeping the API key out of everything ``ual score`` writes or prints.

Every string that came from the judge's side (replies, error messages, server bodies) passes
through ``Redactor`` before it reaches the cache, the output, the failures file or the terminal:
a server that echoes the Authorization header must not leak it into a dataset.
"""

from __future__ import annotations

MASK = "[REDACTED]"


class Redactor:
    """Replaces every occurrence of the secret with a mask."""

    def __init__(self, secret: str | None):
        self.secret = secret or ""

    def __call__(self, text):
        if not isinstance(text, str) or not self.secret:
            return text
        return text.replace(self.secret, MASK)
