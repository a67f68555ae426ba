"""Typed schema for params.yaml: the one place every value lives.

`load_params()` is the only reader; flows, the CLI and every DVC stage go
through it, so a bad value fails before any work with a message that names
the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from transferline.datasets import BUILTIN_IMAGE_SETS
from transferline.models import MODEL_NAMES
from transferline.strategies import STRATEGIES

PARAMS_FILE = Path("params.yaml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestParams(Section):
    source: Literal["mnist"] = "mnist"
    target: Literal["animal-mnist", "folder"] = "animal-mnist"
    folder: str = "data/external/target"
    image_size: int = Field(28, ge=8, le=512)
    channels: Literal[1, 3] = 1


class ValidateParams(Section):
    min_per_class: int = Field(10, ge=1)
    max_leaked: int = Field(0, ge=0)


class SplitParams(Section):
    test_fraction: float = Field(0.2, gt=0, lt=1)
    labels_per_class: int = Field(50, ge=1)
    val_per_class: int = Field(20, ge=1)
    dedupe: bool = True
    source_val_fraction: float = Field(0.1, gt=0, lt=1)
    source_max_samples: int = Field(20000, ge=20)


class PreprocessParams(Section):
    dtype: Literal["float16", "float32"] = "float16"


class TrainParams(Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_epochs: int = Field(0, ge=0)  # linear warm-up, then cosine decay
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = False  # random affine jitter (torchvision v2) on training batches
    patience: int = Field(0, ge=0)  # early stopping on val accuracy; 0 = off


class PretrainParams(TrainParams):
    model: Literal[MODEL_NAMES] = "small_cnn"  # type: ignore[valid-type]


class FinetuneParams(TrainParams):
    # pretrain (this project's pretrain stage), scratch, or a weights file in
    # data/external/weights/ (safetensors or a torch state dict)
    init_from: str = "pretrain"
    strategy: Literal[STRATEGIES] = "full"  # type: ignore[valid-type]
    last_n_blocks: int = Field(1, ge=0)  # strategy last_n
    unfreeze_every: int = Field(3, ge=1)  # strategy gradual: epochs between unfreezing blocks
    lr_decay: float = Field(0.5, gt=0, le=1)  # strategy discriminative: per-block factor
    train_bn: bool = True  # update batch-norm statistics of frozen blocks

    @model_validator(mode="after")
    def _init_from_exists(self) -> FinetuneParams:
        if self.init_from not in ("pretrain", "scratch") and not Path(self.init_from).is_file():
            raise ValueError(
                f"finetune.init_from: {self.init_from!r} is neither 'pretrain', 'scratch' nor an existing "
                "weights file (put it in data/external/weights/)"
            )
        return self


class EvaluateParams(Section):
    batch_size: int = Field(512, ge=1)


class RegisterParams(Section):
    model_name: str = Field("transferline-image", min_length=1)


class ExperimentsParams(Section):
    """Read by `transferline experiment ...`, not by a pipeline stage."""

    budgets: list[int] = Field([5, 10, 25, 50, 100], min_length=1)  # labels per class
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    strategies: list[Literal[STRATEGIES]] = Field(list(STRATEGIES), min_length=1)  # type: ignore[valid-type]


class TrackingParams(Section):
    uri: str = "sqlite:///.transferline/mlflow.db"
    artifact_root: str = ".transferline/mlartifacts"
    experiment: str = "transferline"


class OrchestrateParams(Section):
    """Read by the flows and `transferline deploy | check`, not by a DVC stage."""

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


class Params(Section):
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    modality: Literal["image"] = "image"
    ingest: IngestParams
    validate_: ValidateParams = Field(alias="validate")
    split: SplitParams
    preprocess: PreprocessParams
    pretrain: PretrainParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    register_: RegisterParams = Field(alias="register")
    tracking: TrackingParams
    experiments: ExperimentsParams = ExperimentsParams()
    orchestrate: OrchestrateParams = OrchestrateParams()

    @model_validator(mode="after")
    def _budget_fits_builtin_data(self) -> Params:
        # A folder's class sizes are known only after ingest; validate checks those.
        if self.ingest.target == "folder":
            return self
        per_class = BUILTIN_IMAGE_SETS[self.ingest.target].per_class
        available = int(per_class * (1 - self.split.test_fraction))
        wanted = self.split.labels_per_class + self.split.val_per_class
        if wanted > available:
            raise ValueError(
                f"split.labels_per_class ({self.split.labels_per_class}) + split.val_per_class "
                f"({self.split.val_per_class}) = {wanted} labels per class, but "
                f"{self.ingest.target} has only {available} per class outside the test set "
                f"(split.test_fraction={self.split.test_fraction}); lower split.labels_per_class"
            )
        return self


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


def _format(err: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p).removesuffix("_") for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see params.yaml for the known keys)"
        got = "" if e["type"] in ("missing", "extra_forbidden") else f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}{got}")
    return "\n".join(lines)


def parse_params(raw: dict, path: Path = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format(err, path)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ParamsError naming the bad key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, path)
