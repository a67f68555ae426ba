"""The errors a stage raises for its user: the message says what is wrong and how to fix it."""

from __future__ import annotations


import math


class StageError(RuntimeError):
    """The stage cannot go on; the message names the file, row, key or value and the fix."""


def check_finite_loss(loss: float, where: str, step: int) -> None:
    """Stop training on an inf/NaN loss (called once per epoch on the summed loss, so no sync per
    step): the weights are garbage from here on, and nothing after them may be saved or registered."""
    if not math.isfinite(loss):
        raise StageError(f"{where}: the training loss is {loss} by step {step}; training stopped before saving "
                         "(the last good checkpoint is kept). Lower the learning rate, or look for extreme "
                         "values in the data")
