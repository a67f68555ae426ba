"""The GPU path, measured in one command on a machine with CUDA:

* images/s of supervised image pretraining (`transferline.image.train.fit`,
  params.yaml's pretrain.image model and batch size) on the GPU and on the
  CPU, same code, MNIST-shaped tensors;
* masked-LM pretraining steps/s (`transferline.text.objectives.pretrain_mlm`,
  params.yaml's pretrain.text encoder and batch) and MiniLM fine-tuning
  steps/s (`fit_classifier`), GPU and CPU;
* the whole default image pipeline's wall time (`dvc repro` of a fresh copy
  of the project with the default params.yaml, device auto), when the
  built-in data can be fetched (the downloads cache, TRANSFERLINE_DOWNLOADS,
  or a package index).

    uv run python bench/gpu_check.py [--skip-pipeline]

Writes bench/results/gpu_check.json. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test kit is not installed
from kit.scaffold import ROOT, make_project  # noqa: E402

RESULTS = ROOT / "bench/results/gpu_check.json"


def image_pretrain(device: torch.device, n: int, epochs: int) -> dict:
    """Images per second of `fit` on n random 28x28 images (train time only: val excluded)."""
    from transferline.config import load_params
    from transferline.image.models import build_model
    from transferline.image.train import fit

    cfg = load_params(ROOT / "params.yaml").image.pretrain.model_copy(update={"epochs": epochs, "patience": 0})
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=g).half()
    y = torch.randint(0, 10, (n,), generator=g)
    model = build_model(cfg.model, num_classes=10, in_channels=1)
    t0 = time.perf_counter()
    history = fit(model, (x, y), (x[:512], y[:512]), cfg, device, torch.Generator().manual_seed(0), desc=str(device))
    wall = time.perf_counter() - t0
    # the first epoch pays cuDNN autotuning and allocator warm-up: report the last one too
    last = history[-1]["seconds"]
    return {"model": cfg.model, "batch_size": cfg.batch_size, "images": n, "epochs": epochs,
            "images_per_s": round(n * epochs / wall, 1), "images_per_s_last_epoch": round(n / last, 1)}


def mlm_steps(device: torch.device, steps: int) -> dict:
    """Masked-LM steps per second with params.yaml's pretrain.text encoder on random 64-token texts."""
    from transferline.config import parse_params, read_raw
    from transferline.text.models import encoder_config
    from transferline.text.objectives import new_mlm, pretrain_mlm

    raw = read_raw(ROOT / "params.yaml")
    raw["modality"] = "text"
    cfg = parse_params(raw).text.pretrain
    run = SimpleNamespace(**{**cfg.model_dump(), "steps": steps, "eval_every": steps})
    special = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    ids = torch.randint(5, 8000, (4000, 64), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 2, 3
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pretrain_mlm(new_mlm(encoder_config(8000, 64, cfg, 0), 0), ids, special, run, device, 0, Path(tmp) / "ckpt.safetensors")
        wall = time.perf_counter() - t0
    return {"batch_size": cfg.batch_size, "layers": cfg.layers, "hidden": cfg.hidden, "steps": steps,
            "steps_per_s": round(steps / wall, 2)}


def minilm_steps(device: torch.device, steps: int) -> dict:
    """MiniLM (all-MiniLM-L6-v2, packaged) fine-tuning steps per second, batch 32, 64 tokens."""
    from transferline.config.text import minilm_path
    from transferline.text.models import EncoderClassifier
    from transferline.text.train import fit_classifier
    from transferline.text.weights import load_pretrained_encoder

    encoder = load_pretrained_encoder(minilm_path())
    model = EncoderClassifier(encoder.config, 2)
    model.encoder.load_state_dict(encoder.state_dict())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, encoder.config.vocab_size, (32 * steps, 64), generator=g)
    labels = torch.randint(0, 2, (len(ids),), generator=g)
    t0 = time.perf_counter()
    history = fit_classifier(model, (ids, labels), (ids[:64], labels[:64]), [{"params": model.parameters(), "lr": 1e-4}],
                             1, 32, 0.1, 0, device, torch.Generator().manual_seed(0), max_steps=steps)
    return {"batch_size": 32, "length": 64, "steps": steps, "steps_per_s": round(steps / history[0]["train_seconds"], 2),
            "wall_s": round(time.perf_counter() - t0, 1)}


def pipeline(tmp: Path) -> dict:
    """Wall time of `dvc repro` (the whole default image pipeline) in a fresh copy of the project."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    project = make_project(tmp / "project", raw)
    env = {**os.environ, "TRANSFERLINE_DOWNLOADS": os.environ.get("TRANSFERLINE_DOWNLOADS",
                                                                  str(ROOT / ".transferline/downloads")),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 1)
    if done.returncode:
        return {"error": (done.stdout + done.stderr)[-1500:], "seconds": seconds}
    metrics = json.loads((project / "reports/metrics.json").read_text())
    stages = {}
    for name in ("pretrain", "finetune", "scratch"):
        history = json.loads((project / f"reports/{name}_history.json").read_text())
        stages[name] = round(sum(r["seconds"] for r in history), 1)
    return {"seconds": seconds, "train_seconds": stages,
            "test_accuracy": {k: metrics[k]["accuracy"] for k in ("finetune", "scratch")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-pipeline", action="store_true", help="only the throughput figures")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); nothing to measure here. "
              "Run it on a machine with a GPU.")
        return
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    out: dict = {"gpu": torch.cuda.get_device_name(0), "bf16": torch.cuda.is_bf16_supported(),
                 "torch": torch.__version__, "cpu_count": os.cpu_count(), "platform": platform.platform()}
    out["image_pretrain"] = {"gpu": image_pretrain(gpu, 20000, 3), "cpu": image_pretrain(cpu, 4000, 1)}
    out["image_pretrain"]["speedup"] = round(out["image_pretrain"]["gpu"]["images_per_s_last_epoch"]
                                             / out["image_pretrain"]["cpu"]["images_per_s"], 1)
    out["masked_lm"] = {"gpu": mlm_steps(gpu, 300), "cpu": mlm_steps(cpu, 20)}
    out["minilm_finetune"] = {"gpu": minilm_steps(gpu, 100), "cpu": minilm_steps(cpu, 5)}
    print(json.dumps(out, indent=1), flush=True)
    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory() as tmp:
            out["default_image_pipeline"] = pipeline(Path(tmp))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
