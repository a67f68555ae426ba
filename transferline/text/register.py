"""register for `modality: text`: log transferline/text/serving.py as a pyfunc
"model from code" with the fine-tuned weights, the tokenizer and the labels
as artifacts, and register it under register.text.model_name as a challenger
(`transferline.registry.register_model` does the run, tags and lineage; the
promote stage decides whether it becomes `champion`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from transferline.config import Params
from transferline.dvcexp import skip_in_experiment
from transferline.io import write_json
from transferline.paths import Paths
from transferline.registry import PACKAGE, SERVING_PACKAGES, register_model, require
from transferline.text import data as td

SERVING = PACKAGE / "text" / "serving.py"
TEXT_PACKAGES = ("transformers", "tokenizers", "pandas")  # what serving.py imports beyond SERVING_PACKAGES
EXAMPLE = ["A warm, funny and beautifully acted film.", "Dull, overlong and badly written."]


def run(params: Params, paths: Paths) -> dict:
    """Register the fine-tuned model; the summary written to ${paths.reports}/register.json."""
    if (skipped := skip_in_experiment("register", paths.reports)) is not None:
        return skipped  # an experiment never registers (transferline/dvcexp.py)
    # imported here: serving.py imports mlflow (seconds) and sets the pyfunc "model from code" on import
    from transferline.text.serving import TextClassifier

    weights, tokenizer = paths.weights("finetune"), td.tokenizer_file(paths)
    require({weights: "finetune", paths.processed_meta: "preprocess", tokenizer: "preprocess",
             paths.report("metrics"): "evaluate"})
    prep = td.processed_meta(paths)
    with tempfile.TemporaryDirectory() as tmp:
        labels = write_json(Path(tmp) / "labels.json", {k: prep[k] for k in ("classes", "max_length", "special_ids")})
        artifacts = {"weights": weights, "tokenizer": tokenizer, "labels": labels}
        predicted = TextClassifier().load(str(weights), str(tokenizer), str(labels)).predict(None, EXAMPLE)
        return register_model(params, paths, SERVING, artifacts, EXAMPLE, predicted,
                              SERVING_PACKAGES + TEXT_PACKAGES, classes=list(prep["classes"]))
