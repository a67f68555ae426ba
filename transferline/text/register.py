"""register for `modality: text`: log transferline/text/serving.py as a pyfunc
"model from code" with the weights, tokenizer and labels as artifacts, and
register it under register.text.model_name as a challenger. Shares the run
handling and lineage tags with tasks/register.py; the promote stage decides
whether it becomes `champion`."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from tasks._stage import StageError
from tasks.register import CHAMPION, OUT, PACKAGE, SERVING_PACKAGES, _run, flatten_metrics, pip_requirements
from transferline.config import Params
from transferline.io import read_json, write_json

log = logging.getLogger(__name__)

MODEL = Path("models/finetune/model.safetensors")
PROCESSED = Path("data/processed")
METRICS = Path("reports/metrics.json")
SERVING = PACKAGE / "text" / "serving.py"
TEXT_PACKAGES = ("transformers", "tokenizers", "pandas")
EXAMPLE = ["A warm, funny and beautifully acted film.", "Dull, overlong and badly written."]


def register(params: Params, out_path: Path = OUT) -> dict:
    import mlflow
    from mlflow.models import infer_signature

    from transferline import lineage, tracking
    from transferline.text.serving import TextClassifier

    for path, stage in ((MODEL, "finetune"), (PROCESSED / "meta.json", "preprocess"),
                        (PROCESSED / "tokenizer.json", "preprocess"), (METRICS, "evaluate")):
        if not path.is_file():
            raise StageError(f"{path} not found; run the {stage} stage first (dvc repro {stage})")
    meta = read_json(PROCESSED / "meta.json")
    if meta.get("modality") != "text":
        raise StageError(f"{PROCESSED}/meta.json is not text data; re-run the pipeline from ingest (modality: text)")
    prep = meta["target"]
    flat = flatten_metrics(read_json(METRICS))
    name = params.model_name
    provenance = {**tracking.git_info(), **tracking.dvc_hashes()}
    tracking.configure(params.tracking)
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp, _run() as run_id:
        labels_path = write_json(Path(tmp) / "labels.json", {k: prep[k] for k in ("classes", "max_length", "special_ids")})
        artifacts = {"weights": str(MODEL), "tokenizer": str(PROCESSED / "tokenizer.json"), "labels": str(labels_path)}
        predicted = TextClassifier().load(artifacts["weights"], artifacts["tokenizer"], artifacts["labels"]).predict(None, EXAMPLE)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVING),
            artifacts=artifacts,
            code_paths=[str(PACKAGE)],
            signature=infer_signature(EXAMPLE, predicted),
            input_example=EXAMPLE,
            pip_requirements=pip_requirements(SERVING_PACKAGES + TEXT_PACKAGES),
            registered_model_name=name,
        )
        mlflow.log_metrics(flat)
        mlflow.set_tags({**provenance, "modality": "text"})
        lineage.log_files(client, run_id)
        version_tags = {**{k: f"{v:.6g}" for k, v in flat.items()}, **lineage.collect(client, run_id),
                        "modality": "text"}
    version = str(info.registered_model_version)
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    champion = client.get_registered_model(name).aliases.get(CHAMPION)
    summary = {"name": name, "version": version, "run_id": run_id,
               "champion_version": None if champion is None else str(champion),
               "became_champion": False}  # the promote stage decides
    write_json(out_path, summary)
    log.info("registered %s version %s (run %s); champion is version %s until the promote stage decides",
             name, version, run_id, champion)
    return summary
