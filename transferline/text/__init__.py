"""The text modality, a peer of transferline/image/ with the same module names.

One module per stage (ingest, validate, split, preprocess, pretrain,
finetune, evaluate, register), each with `run(params, paths)`, called by
tasks/<stage>.py when `modality: text`; the shared internals beside them
(data, weights, models, strategies, train, objectives, serving; the
tokenizers live in preprocess.py, the one stage that makes them).
Modules here import core modules and each other, never tasks/, flows/, the
CLI, the experiments or the image package. Kept empty: every text stage
imports this package, so nothing heavy may load here.
"""
