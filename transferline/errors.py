"""The errors a stage raises for its user: the message says what is wrong and how to fix it."""

from __future__ import annotations


import math


class StageError(RuntimeError):
    """The stage cannot go on; the message names the file, row, key or value and the fix."""


def connection_failure(err: BaseException) -> str | None:
    """The refused, reset or timed-out connection at the root of `err`, or None.

    MLflow wraps a tracking server that is down three or four times (urllib3, requests,
    MlflowException); the builtin error at the bottom of the chain is the one that says
    what happened, and the same fault may pass on a retry."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ConnectionError, TimeoutError)):
            return str(err) or type(err).__name__
        err = err.__cause__ or err.__context__
    return None


def mlflow_error_code(err: BaseException) -> str | None:
    """MLflow's error code if `err` is an MlflowException, else None. Without importing MLflow:
    the read-only commands catch its errors but may not load it (transferline.storeview)."""
    if any(cls.__name__ == "MlflowException" for cls in type(err).__mro__):
        return getattr(err, "error_code", None)
    return None


def tracking_unreachable(uri: str, why: str) -> str:
    """What to say when the tracking server stops answering (its password left out)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.password:
        uri = parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rsplit('@', 1)[-1]}").geturl()
    return (f"the tracking server {uri} is unreachable ({why}); start it again (or fix tracking.uri in params.yaml) "
            "and rerun: finished stages are not run again")


def check_finite_loss(loss: float, where: str, step: int) -> None:
    """Stop training on an inf/NaN loss (called once per epoch on the summed loss, so no sync per
    step): the weights are garbage from here on, and nothing after them may be saved or registered."""
    if not math.isfinite(loss):
        raise StageError(f"{where}: the training loss is {loss} by step {step}; training stopped before saving "
                         "(the last good checkpoint is kept). Lower the learning rate, or look for extreme "
                         "values in the data")
