"""Choosing the starting point (transferline/candidates.py) and the LogME estimate
(transferline/transferability.py), on plain numbers: no training."""

from __future__ import annotations

import numpy as np
import pytest

from transferline.candidates import NO_GAIN, NO_GAIN_AT_CEILING, OTHER_STARTS, choose, folder_name, shortlist
from transferline.transferability import logme


def _row(name, acc, loss=1.0):
    return {"candidate": name, "val_acc": acc, "val_loss": loss}


def test_scratch_wins_unless_beaten():
    assert choose([_row("scratch", 0.80), _row("pretrain", 0.85)])["winner"] == "pretrain"
    tie = choose([_row("scratch", 0.80, 0.5), _row("pretrain", 0.80, 0.5)])
    assert tie["winner"] == "scratch" and tie["verdict"] == NO_GAIN + OTHER_STARTS
    lost = choose([_row("scratch", 0.83), _row("pretrain", 0.82), {"candidate": "adapt", "skipped": "LogME"}])
    assert lost["winner"] == "scratch" and lost["val_gain_over_scratch"] == 0
    assert choose([_row("scratch", 0.8, 0.6), _row("pretrain", 0.8, 0.4)])["winner"] == "pretrain"  # loss breaks a tie
    # a one-image lead on a small validation split does not decide (finetune.*.min_val_gain)
    noise = choose([_row("scratch", 0.080, 2.45), _row("pretrain", 0.085, 2.55)], min_gain=0.01)
    assert noise["winner"] == "scratch" and noise["verdict"].startswith(NO_GAIN) and "+0.0050" in noise["verdict"]
    assert choose([_row("scratch", 0.80), _row("pretrain", 0.81)], min_gain=0.01)["winner"] == "pretrain"
    # scratch at 1.0 on validation: nothing was left to gain, so the run does not blame the source
    ceiling = choose([_row("scratch", 1.0, 0.003), _row("pretrain", 1.0, 0.002)], min_gain=0.01)
    assert ceiling["winner"] == "scratch" and ceiling["verdict"].startswith(NO_GAIN_AT_CEILING)
    assert "labels_per_class" in ceiling["verdict"]
    with pytest.raises(ValueError, match="scratch"):
        choose([_row("pretrain", 0.9)])


def test_shortlist_keeps_scratch_and_the_best_estimates():
    est = {"scratch": -2.0, "pretrain": -0.5, "pretrain-adapt": -0.4, "adapt": -1.0}
    assert shortlist(est, 0) == list(est)
    assert shortlist(est, 1) == ["scratch", "pretrain-adapt"]
    assert shortlist(est, 2) == ["scratch", "pretrain", "pretrain-adapt"]
    assert folder_name("scratch") == "scratch" and folder_name("pretrain-adapt") == "candidates/pretrain-adapt"


def test_logme_ranks_informative_features_first():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    centres = rng.normal(size=(5, 32))
    informative = centres[y] + 0.5 * rng.normal(size=(400, 32))
    weak = centres[y] + 3.0 * rng.normal(size=(400, 32))
    noise = rng.normal(size=(400, 32))
    scores = [logme(f, y) for f in (informative, weak, noise)]
    assert scores[0] > scores[1] > scores[2], scores
    with pytest.raises(ValueError, match="pair up"):
        logme(noise, y[:10])


def test_evaluate_scores_each_distinct_weights_file_once(tmp_path):
    """models/finetune is a byte copy of the winner, scratch both baseline and candidate: evaluate
    predicts once per distinct file (transferline.evaluation.once_per_file)."""
    from transferline.evaluation import once_per_file

    files = {name: tmp_path / name for name in ("winner", "finetune", "scratch")}
    files["winner"].write_bytes(b"weights A")
    files["finetune"].write_bytes(b"weights A")
    files["scratch"].write_bytes(b"weights B")
    calls = []
    score = once_per_file(lambda path: calls.append(path.name) or path.read_bytes()[-1:])
    assert [score(files[n]) for n in ("finetune", "scratch", "winner", "scratch")] == [b"A", b"B", b"A", b"B"]
    assert calls == ["finetune", "scratch"]
