"""Typed schema for params.yaml: the one place every value lives.

`load_params()` is the only reader; flows, the CLI and every DVC stage go
through it, so a bad value fails before any work with a message that names
the key. Shared values (seed, paths, tracking, the gate, orchestration) are
typed here; each stage section holds one sub-section per modality, typed by
`transferline/config/image.py` or `text.py`. Only the active modality's
schema is imported, so a text value or text schema never touches an image
stage (DVC lists `transferline/config/${modality}.py`). No torch here: the
CLI imports this to print `--help`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from transferline.config.base import Section
from transferline.paths import Paths

PARAMS_FILE = Path("params.yaml")


class MetricGate(Section):
    """One metric of the promotion gate: the challenger needs `min` on its own and must
    beat the champion by at least `margin_abs` and by at least `margin_rel` x champion."""

    min: float = Field(0.0, ge=0, le=1)
    margin_abs: float = Field(0.0, ge=0, le=1)
    margin_rel: float = Field(0.0, ge=0, le=1)


class PromoteParams(Section):
    # metric (as tasks/evaluate.py names it, scored on the test split) -> its gate
    metrics: dict[Literal["accuracy", "macro_f1"], MetricGate] = Field(
        default_factory=lambda: {"accuracy": MetricGate(min=0.5, margin_abs=0.005), "macro_f1": MetricGate(min=0.5)},
        min_length=1,
    )
    lock: str = "auto"  # auto | a lock file path | postgresql://... (advisory lock); env TRANSFERLINE_PROMOTE_LOCK wins
    lock_timeout_s: float = Field(600, gt=0)
    # a test split smaller than this cannot decide a promotion (9 images once crowned a 3-class model)
    min_test_size: int = Field(30, ge=1)


class TrackingParams(Section):
    uri: str = "sqlite:///.transferline/mlflow.db"
    artifact_root: str = ".transferline/mlartifacts"
    experiment: str = "transferline"


class OrchestrateParams(Section):
    """Read by the flows, `transferline deploy | check` and the experiments' trials, not by a DVC stage."""

    work_pool: str = Field("transferline", min_length=1)
    timezone: str = "UTC"
    pipeline_cron: str | None = "0 2 * * *"
    check_cron: str | None = "0 * * * *"
    retries: int = Field(2, ge=0, le=10)
    retry_delay_seconds: float = Field(10, ge=0)
    fetch_timeout_seconds: float = Field(1800, gt=0)
    registry_timeout_seconds: float = Field(600, gt=0)
    push_timeout_seconds: float = Field(1800, gt=0)
    lock_wait_seconds: float = Field(0, ge=0)
    # run and check start the project's local Prefect server once and reuse it (transferline.localserver):
    # Prefect's ephemeral API costs 7-25 s per command on 2 cores. False: the ephemeral API every time.
    local_server: bool = True
    # The flow's DVC process imports torch and MLflow once and forks each stage's command from
    # itself (transferline.warmstart): 1.5-3 s less per stage. False: a new interpreter per stage.
    warm_stages: bool = True
    # Where experiment trials run: a local pool of processes, or a Ray cluster through prefect-ray.
    trial_runner: Literal["process", "ray"] = "process"
    ray_address: str = ""  # "" = a Ray instance started for the run; host:6379 or ray://host:10001 = a cluster

    @model_validator(mode="after")
    def _schedules_parse(self) -> OrchestrateParams:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        # Field count only: Prefect parses the expression fully at `transferline deploy`
        # (importing it here would slow every stage down).
        for key in ("pipeline_cron", "check_cron"):
            value = getattr(self, key)
            if value is not None and len(value.split()) not in (5, 6):
                raise ValueError(f"orchestrate.{key}: {value!r} is not a cron expression (e.g. \"0 2 * * *\")")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"orchestrate.timezone: unknown time zone {self.timezone!r} (e.g. UTC, Europe/Berlin)") from None
        return self


class DistributedParams(Section):
    """Data-parallel training (pretrain, finetune) under torchrun; 1 process x 1 node = today's single process.

    With more, `python -m tasks.pretrain|finetune` re-launches itself through
    torchrun (transferline/launch.py); every rank trains on its own shard and
    the global batch stays each stage's `batch_size`."""

    nproc_per_node: int = Field(1, ge=1, le=1024)  # processes on this machine (one per GPU on a GPU machine)
    nnodes: int = Field(1, ge=1, le=4096)  # machines; each runs the same stage command
    rdzv_endpoint: str = ""  # host:port of the rendezvous (node 0) when nnodes > 1; "" = this machine alone
    rdzv_id: str = "transferline"  # the job id every node passes to the rendezvous
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPUs, gloo on CPUs

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @model_validator(mode="after")
    def _endpoint_for_several_nodes(self) -> DistributedParams:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"distributed.rdzv_endpoint: {self.nnodes} nodes need a rendezvous host:port "
                             "(node 0's address and a free port, e.g. 10.0.0.1:29400)")
        if self.rdzv_endpoint and ":" not in self.rdzv_endpoint:
            raise ValueError(f"distributed.rdzv_endpoint: {self.rdzv_endpoint!r} is not host:port (e.g. 10.0.0.1:29400)")
        return self


# The stage sections of params.yaml that hold one sub-section per modality
# (`finetune: {image: {...}, text: {...}}`); only the active one is read.
MODALITY_SECTIONS = ("ingest", "validate", "split", "preprocess", "pretrain", "finetune", "evaluate", "register",
                     "experiments")
MODALITIES = ("image", "text")


class Params(Section):
    """params.yaml, typed. Shared values at the top; the active modality's values
    under `image` or `text` (the other is None: never read, never validated)."""

    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    modality: Literal[MODALITIES] = "image"  # type: ignore[valid-type]
    paths: Paths = Paths()
    tracking: TrackingParams = TrackingParams()
    promote: PromoteParams = PromoteParams()
    orchestrate: OrchestrateParams = OrchestrateParams()
    distributed: DistributedParams = DistributedParams()
    image: Any = None  # transferline.config.image.ImageValues when modality: image
    text: Any = None  # transferline.config.text.TextValues when modality: text

    @property
    def values(self) -> Any:
        """The active modality's values (ImageValues or TextValues)."""
        return getattr(self, self.modality)

    def to_raw(self) -> dict:
        """The params.yaml layout again (what parse_params reads): for a trial's own copy."""
        shared = self.model_dump(mode="json", by_alias=True, exclude={"image", "text"})
        values = self.values.model_dump(mode="json", by_alias=True)
        return {**shared, **{section: {self.modality: v} for section, v in values.items()}}

    @property
    def model_name(self) -> str:
        """The registered model's name for this modality."""
        return self.values.register_.model_name


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


def _format(err: ValidationError, path: Path, prefix: dict[str, str] | None = None) -> list[str]:
    """One line per error, the key spelled as in params.yaml; `prefix` maps a stage
    section to its modality sub-section (finetune -> finetune.image)."""
    lines = []
    for e in err.errors():
        parts = [str(p).removesuffix("_") for p in e["loc"]]
        if parts and prefix and parts[0] in prefix:
            parts[0] = prefix[parts[0]]
        key = ".".join(parts) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see params.yaml for the known keys)"
        # a whole section's input (from a section-level check) would bury the message: that one names the value
        quiet = e["type"] in ("missing", "extra_forbidden") or isinstance(e.get("input"), dict)
        got = "" if quiet else f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}{got}")
    return lines


def values_schema(modality: str) -> type[Section]:
    """ImageValues or TextValues, imported by name: the other modality's schema stays unread."""
    module = importlib.import_module(f"transferline.config.{modality}")
    return getattr(module, f"{modality.capitalize()}Values")


def parse_params(raw: dict, path: Path = PARAMS_FILE) -> Params:
    """Validate a params dict: the shared values, then the active modality's values."""
    problems: list[str] = []
    shared = {k: v for k, v in raw.items() if k not in MODALITY_SECTIONS}
    per_modality: dict[str, dict] = {}
    for section in MODALITY_SECTIONS:
        value = raw.get(section) or {}
        if not isinstance(value, dict):
            problems.append(f"  {section}: expected a mapping with image: and/or text: sub-sections")
            continue
        for key in sorted(set(value) - set(MODALITIES)):
            problems.append(f"  {section}.{key}: unknown key (values live under {section}.image or {section}.text)")
        per_modality[section] = value
    try:
        params = Params.model_validate(shared)
    except ValidationError as err:
        raise ParamsError("\n".join([f"{path}: invalid parameters", *_format(err, path), *problems])) from None
    modality = params.modality
    try:
        values = values_schema(modality).model_validate(
            {section: value.get(modality) or {} for section, value in per_modality.items()})
    except ValidationError as err:
        problems += _format(err, path, {s: f"{s}.{modality}" for s in MODALITY_SECTIONS})
        values = None
    if values is not None:
        problems += _batches_split(params.distributed, values, modality)
    if problems:
        raise ParamsError("\n".join([f"{path}: invalid parameters", *problems]))
    return params.model_copy(update={modality: values})


def _batches_split(dist: DistributedParams, values: Any, modality: str) -> list[str]:
    """The global batch is split evenly over the ranks: each training batch_size must divide by the world size."""
    world = dist.world_size
    sizes = {}
    for stage in ("pretrain", "finetune"):
        section = getattr(values, stage)
        if hasattr(section, "batch_size"):
            sizes[f"{stage}.{modality}.batch_size"] = section.batch_size
        for name, start in getattr(section, "starts", {}) or ():  # text: one batch size per start
            sizes[f"{stage}.{modality}.starts.{name}.batch_size"] = start.batch_size
    return [f"  {key}: {size} does not divide over {world} processes "
            f"(distributed.nproc_per_node x nnodes); make it a multiple of {world}"
            for key, size in sizes.items() if size % world]


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML keeps the last of two equal keys silently; a params file must not. libyaml's parser
    where PyYAML has it: 3 ms for params.yaml against 27 ms, in every stage and command."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ParamsError(f"duplicate key {key!r} on lines {seen[key] + 1} and {key_node.start_mark.line + 1}; "
                                  "keep one of them")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_raw(path: str | Path = PARAMS_FILE) -> dict:
    """params.yaml as a plain dict, refusing duplicate keys; raise ParamsError."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the project root (the folder with params.yaml)")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ParamsError naming the bad key."""
    return parse_params(read_raw(path), Path(path))
