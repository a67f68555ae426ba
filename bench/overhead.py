"""Benchmark: what transferline costs over the tools underneath it, side by side in one run.

In a throw-away copy of the project (the default params.yaml, or the "small"
size with --small; the downloaded artifacts shared) it times, on the same
machine in the same run:

1. a no-op `transferline run` vs a no-op `dvc repro` vs `dvc status`: with
   the project's Prefect server up (the default), with it down (the command
   starts it), and with Prefect's ephemeral API (`local_server: false`);
2. a nothing-to-do `transferline check` vs the same two;
3. the full default image run (`transferline run --no-push`, the project's
   Prefect server up) vs one plain Python process that imports up front what
   the run's DVC process imports ahead and calls the same stage functions
   (ingest .. evaluate) with no orchestration, tracking, registry or
   versioning, --repeat times each in alternated pairs: the overhead in %
   (the pair with the median), and stage by stage where it goes; then the
   same run again with each stage in a new interpreter
   (`orchestrate.warm_stages: false`);
4. `fit` (the shared training loop) vs a bare PyTorch loop: same model,
   batch size, optimizer and validation pass per epoch, images/s each;
   the same set streamed from its cache file by DataLoader workers vs in
   memory, and that loader alone; the same for text (`fit_classifier` vs a
   bare loop over the same batches);
5. `transferline --help` vs `python -c pass`, directly and through `uv run`;
6. the read-only commands (`status`, `history`, `lineage`) after the store
   changed (read by transferline.storeview, and with MLflow asked instead, as
   for a store the view cannot read), repeated (answered from
   `.transferline/readcache`), and `status` right after a run.

Each small timing is the median of --repeat runs after a warm-up run; the full run and the
plain script run --repeat times each, in alternated pairs; each training
comparison the median of at least 5 interleaved pairs; ratios sit beside the times because
these machines are noisy. Writes bench/results/overhead.json
and the table in README.md between the overhead-bench markers.

    uv run python bench/overhead.py [--workdir DIR] [--repeat 3] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test kit is not installed
from kit.scaffold import ROOT, make_project  # noqa: E402

RESULTS = ROOT / "bench/results/overhead.json"
README = ROOT / "README.md"
MARKERS = ("<!-- overhead-bench:start -->", "<!-- overhead-bench:end -->")
# "small": the default params.yaml with a quarter of the pretraining source set,
# one pretraining epoch and 10 fine-tuning epochs (the default run: 20k, 2, 30).
SMALL = {"split": {"source_max_samples": 5000}, "pretrain": {"epochs": 1}, "finetune": {"epochs": 10}}
PLAIN_STAGES = ("ingest", "validate", "split", "preprocess", "pretrain", "finetune", "evaluate")
# One process, the same stage functions, nothing around them; each stage's seconds on the last line.
# It imports up front the libraries the run's DVC process imports ahead for its stages
# (transferline.warmstart), as a script would at its top: each stage's timer then holds the same
# work in both (no scikit-learn import inside split's, no torchvision inside finetune's), and what
# the imports cost is each side's own, outside its stages. Its wall time is the same either way.
PLAIN_SCRIPT = f"""
import importlib, json, time
from transferline.config import load_params
from transferline.image import {", ".join(PLAIN_STAGES)}
from transferline.warmstart import WARM_IMPORTS
for name in WARM_IMPORTS["image"]:
    importlib.import_module(name)
params = load_params()
seconds = {{}}
for stage in ({", ".join(PLAIN_STAGES)}):
    t0 = time.perf_counter()
    stage.run(params, params.paths)
    seconds[stage.__name__.rsplit(".", 1)[-1]] = round(time.perf_counter() - t0, 2)
print(json.dumps(seconds))
"""


def bench_params(small: bool) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in SMALL.items() if small else ():
        raw[section]["image"].update(values)
    return raw


def env_for(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(project / ".transferline/prefect"), DVC_NO_ANALYTICS="1",
               TRANSFERLINE_DOWNLOADS=str(ROOT / ".transferline/downloads"), COLUMNS="200")
    env.pop("TRANSFERLINE_MLFLOW_RUN_ID", None)
    return env


def timed(cmd: list[str], cwd: Path, check: bool = True, stdout_only: bool = False) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env_for(cwd), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if check and done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout if stdout_only else done.stdout + done.stderr


def median(cmd: list[str], cwd: Path, repeat: int, expect: str | None = None) -> float:
    """The median of `repeat` timed runs after one untimed warm-up run (the file cache, the
    server's first requests), the same for every command compared."""
    times = []
    for i in range(repeat + 1):
        seconds, out = timed(cmd, cwd)
        if expect is not None and expect not in out:
            sys.exit(f"{' '.join(cmd)}: expected {expect!r} in its output:\n{out[-3000:]}")
        if i:
            times.append(seconds)
    return round(statistics.median(times), 3)


PY = sys.executable
TRAIN_PAIRS = 5  # at least: a training comparison's runs vary by 10 % and more on 2 cores
TL = [PY, "-m", "transferline.cli"]
# The CLI with the SQLite view told that no database has its schema: every read asks MLflow,
# as for a tracking server or a store of another MLflow version.
ASK_MLFLOW = [PY, "-c", "import sys, transferline.storeview as v; v.SCHEMA = 'none'; sys.argv[0] = 'transferline'; "
              "from transferline.cli.main import main; main()"]
DVC = [PY, "-m", "dvc"]


def set_orchestrate(project: Path, key: str, on: bool) -> None:
    """params.yaml `orchestrate.<key>`, a boolean (no stage reads it: DVC sees no change)."""
    path = project / "params.yaml"
    text, n = re.subn(rf"(?m)^(\s+{key}:) \w+", rf"\1 {str(on).lower()}", path.read_text())
    assert n == 1, f"params.yaml has no orchestrate.{key}"
    path.write_text(text)


def noop_block(project: Path, repeat: int) -> dict:
    """Lines 1 and 2: no-op run and nothing-to-do check with the local server up (the default;
    the full block started it), the first command when it is down (it starts it), and with
    Prefect's ephemeral API (`orchestrate.local_server: false`)."""
    out = {"dvc_repro_s": median([*DVC, "repro"], project, repeat),
           "dvc_status_s": median([*DVC, "status"], project, repeat)}
    try:
        out["run_server_s"] = median([*TL, "run", "--no-push"], project, repeat, "ran: nothing")
        out["check_server_s"] = median([*TL, "check", "--no-push"], project, repeat, "nothing to do")
        timed([*TL, "server", "stop"], project)
        seconds, said = timed([*TL, "run", "--no-push"], project)
        assert "started this project's Prefect server" in said, said[-2000:]
        out["run_starting_server_s"] = round(seconds, 3)
    finally:
        timed([*TL, "server", "stop"], project, check=False)
    set_orchestrate(project, "local_server", False)
    try:
        out["run_ephemeral_s"] = median([*TL, "run", "--no-push"], project, repeat, "ran: nothing")
        out["check_ephemeral_s"] = median([*TL, "check", "--no-push"], project, repeat, "nothing to do")
    finally:
        set_orchestrate(project, "local_server", True)
    for key in ("run_server", "check_server", "run_starting_server", "run_ephemeral", "check_ephemeral"):
        out[f"{key}_over_dvc_repro"] = round(out[f"{key}_s"] / out["dvc_repro_s"], 2)
        out[f"{key}_over_dvc_status"] = round(out[f"{key}_s"] / out["dvc_status_s"], 2)
    return out


def reads_block(project: Path, repeat: int) -> dict:
    """Line 6: the read-only commands on the full run's registry, the first time after the store
    changed (the kept answers removed before each run), read by the SQLite view and with MLflow
    asked instead (ASK_MLFLOW), and repeated (answered from the cache)."""
    from transferline.readcache import FOLDER

    out = {}
    for command in ("status", "history", "lineage"):
        for key, cli in ((f"{command}_s", TL), (f"{command}_mlflow_s", ASK_MLFLOW)):
            asked = []
            for i in range(repeat + 1):
                shutil.rmtree(project / FOLDER, ignore_errors=True)
                seconds, _ = timed([*cli, command], project)
                if i:
                    asked.append(seconds)
            out[key] = round(statistics.median(asked), 3)
        out[f"{command}_kept_s"] = median([*TL, command], project, repeat)
    after_run = []
    for _ in range(repeat):  # a run writes to the store; the status after it reads the new answer
        timed([*TL, "run", "--no-push"], project)
        after_run.append(timed([*TL, "status"], project)[0])
    out["status_after_run_s"] = round(statistics.median(after_run), 3)
    return out


def own_work(summary: dict) -> float:
    """ingest .. evaluate's own work in a run's --json summary (each stage times it inside its process)."""
    return sum(r["work_seconds"] for r in summary["stages"] if r["stage"] in PLAIN_STAGES)


def rerun_all(project: Path) -> None:
    """No dvc.lock and no run cache: DVC reruns every stage."""
    (project / "dvc.lock").unlink()
    shutil.rmtree(project / ".dvc/cache/runs", ignore_errors=True)


def pipeline_run(project: Path) -> tuple[float, dict]:
    """Every stage run again, timed: the wall time and the run's --json summary."""
    rerun_all(project)
    seconds, out = timed([*TL, "run", "--no-push", "--json"], project, stdout_only=True)
    summary = json.loads(out)
    assert not summary["skipped"], summary
    return seconds, summary


def plain_run(plain: Path) -> tuple[float, dict[str, float]]:
    """The plain script, timed: the wall time and its seconds per stage."""
    seconds, out = timed([PY, "-c", PLAIN_SCRIPT], plain, stdout_only=True)
    return seconds, json.loads(out.strip().splitlines()[-1])


def percent_over(total: float, part: float) -> float:
    return round(100 * (total - part) / total, 1)


def full_block(project: Path, plain: Path, pairs: int) -> dict:
    """Line 3: the full run vs one plain process doing the same stages, `pairs` times in alternated
    order, and where the difference goes. Two training runs of the same job differ by a few %,
    as much as what is measured: line 3 is the pair with the median overhead (its stages, its
    parts), each pair's figures beside it. The project's Prefect server is up before the run, as for
    every run but a machine's first (whose start is timed apart: server_start_s)."""
    server_start_s = timed([*TL, "server", "start"], project)[0]
    # No timed run is the project's first: a short one creates the MLflow store and the
    # experiment (first-time work no nightly run does), then every stage runs again.
    timed([*TL, "run", "--no-push", "--until", "validate"], project)
    runs = []
    for i in range(pairs):  # order alternated: the machine's drift (its page cache, its clock) falls on both
        if i % 2 == 0:
            full, bare = pipeline_run(project), plain_run(plain)
        else:
            bare = plain_run(plain)
            full = pipeline_run(project)
        runs.append((*full, *bare))
    per_pair = []
    for full_s, summary, plain_s, plain_stages in runs:
        work, plain_work = own_work(summary), sum(plain_stages.values())
        per_pair.append({"full_run_s": round(full_s, 1), "plain_script_s": round(plain_s, 1),
                         "overhead_pct": percent_over(full_s, plain_s),
                         # the same run's own work (each stage times it inside its process): no second training run in it
                         "own_work_s": round(work, 1), "overhead_over_own_work_pct": percent_over(full_s, work),
                         # the plain script's wall time over its stages: its interpreter and imports, paid by any job
                         "plain_stages_s": round(plain_work, 1), "plain_over_its_stages_pct": percent_over(plain_s, plain_work)})
    mid = sorted(range(pairs), key=lambda i: per_pair[i]["overhead_pct"])[(pairs - 1) // 2]
    full_s, summary, plain_s, plain_stages = runs[mid]
    ft = json.loads((project / "reports/metrics.json").read_text())["finetune"]["accuracy"]
    ft_plain = json.loads((plain / "reports/metrics.json").read_text())["finetune"]["accuracy"]
    stages = {r["stage"]: {"pipeline_s": r["seconds"], "work_s": r["work_seconds"],
                           "plain_s": plain_stages.get(r["stage"], 0.0)} for r in summary["stages"]}
    # Every stage again in a new interpreter, as before the stages were forked from the warm DVC
    # process (transferline.warmstart).
    set_orchestrate(project, "warm_stages", False)
    try:
        cold_s, cold = pipeline_run(project)
    finally:
        set_orchestrate(project, "warm_stages", True)
    assert cold["ran"] == summary["ran"], cold
    cold_work = own_work(cold)
    # line 3 is the pair with the median overhead, whose stages and parts add up to it
    return {"server_start_s": round(server_start_s, 2), "pairs": per_pair, **per_pair[mid],
            "stages": stages, "around_stages_s": round(full_s - sum(r["seconds"] for r in summary["stages"]), 1),
            "cold_run_s": round(cold_s, 1), "cold_own_work_s": round(cold_work, 1),
            "cold_overhead_over_own_work_pct": percent_over(cold_s, cold_work),
            "cold_stages": {r["stage"]: {"pipeline_s": r["seconds"], "work_s": r["work_seconds"]} for r in cold["stages"]},
            "finetune_accuracy": ft, "finetune_accuracy_plain": ft_plain}


def paired(bare: Callable[[], float], ours: Callable[[], float], repeat: int) -> dict[str, float]:
    """{"bare", "fit": median seconds; "ratio": the median of bare/fit over interleaved pairs;
    "best_ratio": the fastest bare over the fastest fit}, after a warm-up call of each (first calls
    pay for lazy initialisation). A load spike or a clock change hits both runs of a pair, and the
    median of the pairs' ratios is not swayed by one lucky run, which the fastest-of-each ratio is
    (seen on a 2-core machine: one bare run 18.3 s, its other four 20.6-21.6 s)."""
    bare(), ours()
    times: dict[str, list[float]] = {"fit": [], "bare": []}
    for _ in range(max(repeat, TRAIN_PAIRS)):
        times["bare"].append(bare())
        times["fit"].append(ours())
    return {"bare": statistics.median(times["bare"]), "fit": statistics.median(times["fit"]),
            "ratio": statistics.median(b / f for b, f in zip(times["bare"], times["fit"])),
            "best_ratio": min(times["bare"]) / min(times["fit"])}


def train_block(repeat: int) -> dict:
    """Line 4: `fit` vs a bare loop on the same model, batch size and optimizer (in this process)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from transferline.config.image import TrainParams
    from transferline.image.models import build_model
    from transferline.image.train import fit

    n, epochs, batch = 4096, 2, 128
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    val = (x[:512], y[:512])
    cfg = TrainParams(epochs=epochs, batch_size=batch, lr=1e-3)

    def ours(layout: torch.memory_format = torch.channels_last) -> float:  # build_model's layout by default
        torch.manual_seed(0)
        model = build_model("small_cnn", 10, 1).to(memory_format=layout)
        t0 = time.perf_counter()
        fit(model, (x, y), val, cfg, torch.device("cpu"), torch.Generator().manual_seed(0), desc="bench")
        return time.perf_counter() - t0

    def bare() -> float:
        torch.manual_seed(0)
        model = build_model("small_cnn", 10, 1)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        loss_fn = torch.nn.CrossEntropyLoss()
        t0 = time.perf_counter()
        for _ in range(epochs):
            model.train()
            for xb, yb in loader:
                loss = loss_fn(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            # the validation images once per epoch, as fit does (and any loop that keeps the best epoch)
            model.eval()
            with torch.inference_mode():
                (model(val[0]).argmax(1) == val[1]).float().mean().item()
        return time.perf_counter() - t0

    best = paired(bare, ours, repeat)
    # "bare": `fit` with contiguous (NCHW) weights, as before build_model made them channels-last
    layout = paired(lambda: ours(torch.contiguous_format), ours, repeat)
    images = n * epochs
    return {"train_images": images, "batch_size": batch, "threads": torch.get_num_threads(),
            "fit_images_per_s": round(images / best["fit"]), "bare_images_per_s": round(images / best["bare"]),
            "fit_over_bare_speed": round(best["ratio"], 3), "fit_over_bare_best_of": round(best["best_ratio"], 3),
            "contiguous_images_per_s": round(images / layout["bare"]),
            "channels_last_images_per_s": round(images / layout["fit"]),
            "channels_last_over_contiguous_speed": round(layout["ratio"], 3)}


def stream_block(repeat: int, workers: int = 2) -> dict:
    """Line 4, streamed: `fit` on a training set read from its cache file by `workers` DataLoader
    processes (pretrain.image.loader_workers) vs the same set in memory, and the loader alone
    (reading and collating batches, no model): it keeps up when it delivers more images/s than
    the model consumes. The file sits in the OS page cache after the first epoch (on a set larger
    than memory the disk's read speed bounds the loader instead)."""
    import torch
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader

    from transferline import distributed as dist
    from transferline.config.image import PretrainParams
    from transferline.image.data import CachedRows
    from transferline.image.models import build_model
    from transferline.image.train import StreamedSet, fit, worker_context

    n, epochs, batch = 4096, 2, 128
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    val = (x[:512], y[:512])
    cfg = PretrainParams(epochs=epochs, batch_size=batch, lr=1e-3, loader_workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "source.safetensors"
        save_file({"x_train": x, "y_train": y}, str(path))
        rows = CachedRows(path, "x_train")

        def run(train: tuple) -> Callable[[], float]:
            def timed_fit() -> float:
                torch.manual_seed(0)
                model = build_model("small_cnn", 10, 1)
                t0 = time.perf_counter()
                fit(model, train, val, cfg, torch.device("cpu"), torch.Generator().manual_seed(0), desc="bench")
                return time.perf_counter() - t0
            return timed_fit

        best = paired(run((x, y)), run((rows, y)), repeat)  # "bare": in memory, "fit": streamed

        def loader_alone() -> float:
            loader = DataLoader(StreamedSet(rows, y), sampler=dist.global_batches(n, batch, torch.Generator().manual_seed(0)),
                                batch_size=None, num_workers=workers, multiprocessing_context=worker_context())
            t0 = time.perf_counter()
            for _ in range(epochs):
                for _batch in loader:
                    pass
            return time.perf_counter() - t0

        loader_s = min(loader_alone() for _ in range(repeat))
    images = n * epochs
    return {"stream_workers": workers, "memory_images_per_s": round(images / best["bare"]),
            "streamed_images_per_s": round(images / best["fit"]),
            "streamed_over_memory_speed": round(best["ratio"], 3),
            "streamed_over_memory_best_of": round(best["best_ratio"], 3),
            "loader_alone_images_per_s": round(images / loader_s),
            "loader_over_model_speed": round(best["fit"] / loader_s, 2)}


def text_train_block(repeat: int) -> dict:
    """Line 4, text: `fit_classifier` vs a bare loop over the same length-grouped, trimmed batches
    (a small BERT encoder, AdamW, gradient clipping, a validation pass per epoch), in this process."""
    import torch
    from transformers import BertConfig

    from transferline.text.models import EncoderClassifier, predict_logits, trim
    from transferline.text.train import fit_classifier, length_grouped

    n, length, vocab, batch, epochs, pad = 2048, 64, 2000, 32, 2, 0
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    ids[torch.arange(length) >= torch.randint(8, length, (n, 1), generator=g)] = pad  # real lengths 8..63
    y = torch.randint(0, 2, (n,), generator=g)
    val = (ids[:256], y[:256])
    config = BertConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=256, max_position_embeddings=length, pad_token_id=pad)
    cpu = torch.device("cpu")

    def model_and_groups() -> tuple[torch.nn.Module, list[dict]]:
        torch.manual_seed(0)
        model = EncoderClassifier(config, 2)
        return model, [{"params": list(model.parameters()), "lr": 1e-4, "weight_decay": 0.01}]

    def ours() -> float:
        model, groups = model_and_groups()
        t0 = time.perf_counter()
        fit_classifier(model, (ids, y), val, groups, epochs, batch, 0.1, pad, cpu, torch.Generator().manual_seed(0),
                       desc="bench")
        return time.perf_counter() - t0

    def bare() -> float:
        model, groups = model_and_groups()
        opt = torch.optim.AdamW(groups)
        loss_fn = torch.nn.CrossEntropyLoss()
        lengths, gen = (ids != pad).sum(1), torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for _ in range(epochs):
            model.train()
            for idx in length_grouped(torch.randperm(n, generator=gen), lengths, batch, gen):  # fit's batches
                x, attn = trim(ids[idx], pad)
                loss = loss_fn(model(input_ids=x, attention_mask=attn), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            model.eval()
            (predict_logits(model, val[0], pad, batch * 4, cpu).argmax(1) == val[1]).float().mean().item()
        return time.perf_counter() - t0

    best = paired(bare, ours, repeat)
    return {"text_train_texts": n * epochs, "text_batch_size": batch,
            "text_fit_texts_per_s": round(n * epochs / best["fit"]),
            "text_bare_texts_per_s": round(n * epochs / best["bare"]),
            "text_fit_over_bare_speed": round(best["ratio"], 3),
            "text_fit_over_bare_best_of": round(best["best_ratio"], 3)}


def start_block(repeat: int, cwd: Path) -> dict:
    """Line 5: `transferline --help` vs `python -c pass`; the same through `uv run`, as the README
    has users type them (uv checks the environment against uv.lock first)."""
    help_s = median([*TL, "--help"], cwd, repeat)
    pass_s = median([PY, "-c", "pass"], cwd, repeat)
    out = {"help_s": help_s, "python_pass_s": pass_s, "help_over_python": round(help_s / pass_s, 1)}
    if uv := shutil.which("uv"):
        uv_run = [uv, "run", "--project", str(ROOT)]
        out["uv_help_s"] = median([*uv_run, "transferline", "--help"], cwd, repeat)
        out["uv_python_pass_s"] = median([*uv_run, "python", "-c", "pass"], cwd, repeat)
    return out


def stage_overhead(full: dict, part: str) -> float | None:
    """Seconds the pipeline's stages took over the plain script's: the stages both run ("work"),
    or register and promote, which only the pipeline has ("registry"); or every stage's wall
    time in the run over its own work ("process": its process, imports and DVC, with no second
    training run's noise in it)."""
    rows = full["stages"].items()
    if part == "registry":
        return sum(r["pipeline_s"] for s, r in rows if s in ("register", "promote"))
    if part == "process":  # None where an older JSON lacks a stage's own work
        if any(r.get("work_s") is None for _, r in rows):
            return None
        return sum(r["pipeline_s"] - r["work_s"] for _, r in rows)
    return sum(r["pipeline_s"] - r["plain_s"] for s, r in rows if s not in ("register", "promote"))


def added_s(pair: dict) -> float:
    """What transferline adds around the stages' own work in one pair, with no second training run
    in it: the run over its own work less the plain script over its own (its interpreter and imports,
    which import up front what the run's DVC process imports ahead, so both sides' stage timers hold
    the same work). What slows a stage's own work in the run (CPU used beside it) is not in it."""
    return (pair["full_run_s"] - pair["own_work_s"]) - (pair["plain_script_s"] - pair["plain_stages_s"])


def added_pct(pair: dict) -> float:
    return 100 * added_s(pair) / pair["full_run_s"]


def work_over_plain_s(pair: dict) -> float:
    """The run's stages' own work (ingest .. evaluate) over the plain script's same stages."""
    return pair["own_work_s"] - pair["plain_stages_s"]


def each_pair(full: dict, value: str | Callable[[dict], float], form: str = "{:.1f}", unit: str = "%") -> str:
    """` (pairs: a, b, c %)`: each pair's figure (a key, or computed from the pair) beside their
    median; nothing for a result of one run."""
    if "pairs" not in full:
        return ""
    get = value if callable(value) else (lambda pair: pair[value])
    return f" (pairs: {', '.join(form.format(get(p)) for p in full['pairs'])} {unit})"


def table(r: dict) -> str:
    n, f, t, s = r["noop"], r["full"], r["train"], r["start"]
    process = stage_overhead(f, "process")
    rows = [
        ("no-op `transferline run` (the default: the project's Prefect server up)", f"{n['run_server_s']:.2f} s",
         f"{n['run_server_over_dvc_repro']}x `dvc repro` ({n['dvc_repro_s']:.2f} s), "
         f"{n['run_server_over_dvc_status']}x `dvc status` ({n['dvc_status_s']:.2f} s)"),
        ("nothing-to-do `transferline check` (server up)", f"{n['check_server_s']:.2f} s",
         f"{n['check_server_over_dvc_repro']}x `dvc repro`, {n['check_server_over_dvc_status']}x `dvc status`"),
        ("no-op run with the server down (a machine's first command: it starts the server)",
         f"{n['run_starting_server_s']:.2f} s", f"{n['run_starting_server_over_dvc_repro']}x `dvc repro`"),
        ("no-op run, `orchestrate.local_server: false` (Prefect's ephemeral API)", f"{n['run_ephemeral_s']:.2f} s",
         f"{n['run_ephemeral_over_dvc_repro']}x `dvc repro`, {n['run_ephemeral_over_dvc_status']}x `dvc status`"),
        ("nothing-to-do check, ephemeral API", f"{n['check_ephemeral_s']:.2f} s",
         f"{n['check_ephemeral_over_dvc_repro']}x `dvc repro`, {n['check_ephemeral_over_dvc_status']}x `dvc status`"),
        ("read-only `status`, `history`, `lineage` after the store changed (read from the SQLite file)",
         f"{n['status_s']:.2f}, {n['history_s']:.2f}, {n['lineage_s']:.2f} s",
         f"{n['status_s'] / s['python_pass_s']:.0f}x `python -c pass`; target: well under 1 s"),
        ("... the same with MLflow asked (a store the view cannot read: a server, another schema)",
         f"{n['status_mlflow_s']:.2f}, {n['history_mlflow_s']:.2f}, {n['lineage_mlflow_s']:.2f} s",
         f"{n['status_mlflow_s'] / n['status_s']:.1f}x the read from the file"),
        ("... the same repeated with no change (the kept answer, `.transferline/readcache`)",
         f"{n['status_kept_s']:.2f}, {n['history_kept_s']:.2f}, {n['lineage_kept_s']:.2f} s",
         f"{n['status_kept_s'] / s['python_pass_s']:.0f}x `python -c pass`"),
        *([("`status` right after a no-op run", f"{n['status_after_run_s']:.2f} s",
            f"{n['status_after_run_s'] / n['status_s']:.2f}x the status above")] if "status_after_run_s" in n else []),
        (f"full image run ({r['size']}) vs one plain Python process, same stages",
         f"{f['full_run_s']:.1f} s vs {f['plain_script_s']:.1f} s",
         f"overhead {f['overhead_pct']:.1f} %" + each_pair(f, "overhead_pct")),
        *([("... the plain script over its stages' own time (its interpreter and imports: what any job pays)",
            f"{f['plain_script_s']:.1f} s vs {f['plain_stages_s']:.1f} s",
            f"{f['plain_over_its_stages_pct']:.1f} %" + each_pair(f, "plain_over_its_stages_pct"))]
          if "plain_stages_s" in f else []),
        ("... of which: the CLI and Prefect around the stages; ingest .. evaluate over the plain script "
         "(their processes, DVC, and the noise of a second training run); register + promote"
         + ("; less the plain script's interpreter and imports" if "plain_stages_s" in f else ""),
         f"{f['around_stages_s']:.1f} s; {stage_overhead(f, 'work'):.1f} s; {stage_overhead(f, 'registry'):.1f} s"
         + (f"; -{f['plain_script_s'] - f['plain_stages_s']:.1f} s" if "plain_stages_s" in f else ""),
         "(no plain counterpart for register and promote)"),
        *([("... every stage's wall time in the run over its own work (its process, imports and DVC)",
            f"{process:.1f} s", f"{process / f['full_run_s'] * 100:.1f} % of the run")] if process is not None else []),
        *([("... the same run vs its own work (ingest .. evaluate, timed inside each stage's process)",
            f"{f['full_run_s']:.1f} s vs {f['own_work_s']:.1f} s",
            f"overhead {f['overhead_over_own_work_pct']:.1f} %" + each_pair(f, "overhead_over_own_work_pct"))]
          if "own_work_s" in f else []),
        *([("... what transferline adds around the stages' own work: the run over its own work less the plain "
            "script over its own (both sides' stage timers hold the same work: the plain script imports up front "
            "what the run's DVC process imports ahead); blind to anything that slows the stages' own work",
            f"{added_s(f):.1f} s", f"{added_pct(f):.1f} % of the run" + each_pair(f, added_pct)),
           ("... the run's stages' own work (ingest .. evaluate) over the plain script's same stages: a second "
            "training run's noise, and what slows a stage inside the run (CPU beside it: bench/run_trace.py)",
            f"{work_over_plain_s(f):+.1f} s", each_pair(f, work_over_plain_s, "{:+.1f}", "s").strip())]
          if "own_work_s" in f and "plain_stages_s" in f else []),
        *([("... the same run again, each stage in a new interpreter (`orchestrate.warm_stages: false`, as before "
            "the stages were forked from the warm DVC process), vs its own work",
            f"{f['cold_run_s']:.1f} s vs {f['cold_own_work_s']:.1f} s",
            f"overhead {f['cold_overhead_over_own_work_pct']:.1f} %; the warm run took "
            f"{f['full_run_s'] / f['cold_run_s']:.2f}x its time")] if "cold_run_s" in f else []),
        (f"`fit` vs a bare PyTorch loop (small_cnn, batch {t['batch_size']}, AdamW, {t['threads']} threads)",
         f"{t['fit_images_per_s']} vs {t['bare_images_per_s']} images/s", f"{t['fit_over_bare_speed']}x the bare speed"),
        *([("... `fit` with channels-last weights (build_model's default) vs contiguous (NCHW) ones",
            # the channels-last figure of the same pairs (older results kept only the contiguous one)
            f"{t['channels_last_images_per_s']} vs {t['contiguous_images_per_s']} images/s"
            if "channels_last_images_per_s" in t else f"contiguous: {t['contiguous_images_per_s']} images/s",
            f"{t['channels_last_over_contiguous_speed']}x")] if "contiguous_images_per_s" in t else []),
        (f"`fit` streaming the set from its cache file ({t['stream_workers']} DataLoader workers) vs in memory",
         f"{t['streamed_images_per_s']} vs {t['memory_images_per_s']} images/s",
         f"{t['streamed_over_memory_speed']}x; the loader alone: {t['loader_alone_images_per_s']} images/s, "
         f"{t['loader_over_model_speed']}x what the model consumes"),
        (f"text `fit_classifier` vs a bare loop (2-layer BERT, batch {t['text_batch_size']}, same trimmed batches)",
         f"{t['text_fit_texts_per_s']} vs {t['text_bare_texts_per_s']} texts/s", f"{t['text_fit_over_bare_speed']}x the bare speed"),
        ("`transferline --help` vs `python -c pass`", f"{s['help_s']:.2f} s vs {s['python_pass_s']:.3f} s",
         f"{s['help_over_python']}x"),
        *([("... through `uv run` (as the README types it) vs `uv run python -c pass`",
            f"{s['uv_help_s']:.2f} s vs {s['uv_python_pass_s']:.2f} s",
            f"{s['uv_help_s'] / s['uv_python_pass_s']:.1f}x")] if "uv_help_s" in s else []),
    ]
    pairs = max(r["repeat"], TRAIN_PAIRS)
    full_pairs = (f"; the full run and the plain script: {len(f['pairs'])} pairs in alternated order, line 3 the "
                  f"pair with the median overhead, each pair's figure in parentheses" if "pairs" in f else "")
    lines = [f"Machine: {r['machine']}. Medians of {r['repeat']} runs after a warm-up run (the training loops: medians of "
             f"{pairs} interleaved pairs, the ratio the median of the pairs' ratios; the fastest-of-each ratio in "
             f"bench/results/overhead.json as *_best_of{full_pairs}). Command: `{r['command']}`.", "",
             "| what | time | ratio |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n\n" + stage_table(f)


def stage_table(f: dict) -> str:
    """The full run stage by stage: wall time in the run (DVC, the process, imports, work), the
    work the stage timed inside its process, and the same stage in the plain script."""
    cold = f.get("cold_stages", {})
    lines = ["The full run of line 3, stage by stage (seconds; in a new interpreter each: the run with "
             "`orchestrate.warm_stages: false`):", "",
             "| stage | in the run | its own work | in a new interpreter | its own work | plain script |",
             "|---|---|---|---|---|---|"]
    for stage, r in f["stages"].items():
        plain = f"{r['plain_s']:.1f}" if r["plain_s"] else "-"  # register and promote: none
        c = cold.get(stage)
        again = f"{c['pipeline_s']:.1f} | {c['work_s']:.1f}" if c else "- | -"
        lines.append(f"| {stage} | {r['pipeline_s']:.1f} | {r['work_s']:.1f} | {again} | {plain} |")
    return "\n".join(lines) + "\n"


def write_readme(result: dict) -> None:
    text = README.read_text()
    block = f"{MARKERS[0]}\n{table(result)}{MARKERS[1]}"
    if MARKERS[0] not in text:
        sys.exit(f"{README} has no {MARKERS[0]} ... {MARKERS[1]} block to fill in")
    README.write_text(re.sub(re.escape(MARKERS[0]) + ".*" + re.escape(MARKERS[1]), lambda _: block, text, flags=re.S))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the throw-away projects")
    parser.add_argument("--repeat", type=int, default=3, help="runs per small timing (median); pairs of the full run and the plain "
                        "script (line 3: the pair with the median overhead)")
    parser.add_argument("--small", action="store_true", help="a quarter of the source set, 1 pretraining and "
                        "10 fine-tuning epochs, for a quick look (the issue's figure is the default run)")
    parser.add_argument("--blocks", type=lambda v: v.split(","), default=["full", "noop", "train", "start"],
                        help="which lines to measure (comma-separated; the rest are kept from the results file)")
    parser.add_argument("--render", action="store_true", help="only rewrite the README table from "
                        "bench/results/overhead.json (after a change to the table's wording)")
    args = parser.parse_args()
    if args.render:
        write_readme(json.loads(RESULTS.read_text()))
        return
    if "noop" in args.blocks and "full" not in args.blocks:
        parser.error("the noop block times the project the full block builds: measure both")
    import torch

    work = Path(args.workdir or tempfile.mkdtemp(prefix="transferline-overhead-"))
    project = make_project(work / "project", bench_params(args.small))
    plain = make_project(work / "plain", bench_params(args.small))
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
        "size": ("small: default params, split.source_max_samples 5000, pretrain 1 epoch, finetune 10 epochs"
                 if args.small else "the default params.yaml"),
        "repeat": args.repeat,
        "command": f"uv run python bench/overhead.py --repeat {args.repeat}" + " --small" * args.small
                   + (f" --blocks {','.join(args.blocks)}" if len(args.blocks) < 4 else ""),
    }
    blocks = {"full": lambda: full_block(project, plain, args.repeat),
              "noop": lambda: {**noop_block(project, args.repeat), **reads_block(project, args.repeat)},
              "train": lambda: {**train_block(args.repeat), **stream_block(args.repeat),
                               **text_train_block(args.repeat)}, "start": lambda: start_block(args.repeat, project)}
    kept = json.loads(RESULTS.read_text()) if RESULTS.is_file() and args.blocks != list(blocks) else {}
    try:
        for name, measure in blocks.items():
            if name == "train":  # the loops train alone: the project's Prefect server (up since the full block) stopped
                timed([*TL, "server", "stop"], project, check=False)
            if name in args.blocks:
                result[name] = measure()
            else:  # measured by an earlier run (the noop block needs the full run's project)
                result[name] = kept[name]
                result["command"] += f"; {name} from an earlier run"
    finally:  # the full block started the project's Prefect server
        timed([*TL, "server", "stop"], project, check=False)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_readme(result)
    print(table(result))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
