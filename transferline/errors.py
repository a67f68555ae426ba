"""The errors a stage raises for its user: the message says what is wrong and how to fix it."""

from __future__ import annotations


class StageError(RuntimeError):
    """The stage cannot go on; the message names the file, row, key or value and the fix."""
