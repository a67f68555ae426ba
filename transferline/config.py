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
from transferline.text.params import (
    DEFAULT_TRIALS,
    TextFinetuneParams,
    TextIngestParams,
    TextPreprocessParams,
    TextPretrainParams,
    TextRegisterParams,
    TextSplitParams,
    TextTrial,
    TextValidateParams,
    check_tokenizer_matches,
)

PARAMS_FILE = Path("params.yaml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestParams(Section):
    source: Literal["mnist"] = "mnist"
    target: Literal["animal-mnist", "folder"] = "animal-mnist"
    folder: str = "data/external/target"
    image_size: int = Field(28, ge=8, le=512)
    channels: Literal[1, 3] = 1
    text: TextIngestParams = TextIngestParams()  # modality: text


class ValidateParams(Section):
    min_per_class: int = Field(10, ge=1)
    max_leaked: int = Field(0, ge=0)
    text: TextValidateParams = TextValidateParams()  # modality: text


class SplitParams(Section):
    test_fraction: float = Field(0.2, gt=0, lt=1)
    labels_per_class: int = Field(50, ge=1)
    val_per_class: int = Field(20, ge=1)
    dedupe: bool = True
    source_val_fraction: float = Field(0.1, gt=0, lt=1)
    source_max_samples: int = Field(20000, ge=20)
    text: TextSplitParams = TextSplitParams()  # modality: text


class PreprocessParams(Section):
    dtype: Literal["float16", "float32"] = "float16"
    text: TextPreprocessParams = TextPreprocessParams()  # modality: text


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
    # supervised: source labels; denoising / contrastive: no labels, on the
    # unlabelled pool (transferline.ssl); finetune loads the backbone alike.
    objective: Literal["supervised", "denoising", "contrastive"] = "supervised"
    unlabelled: list[Literal["source", "target"]] = Field(["source", "target"], min_length=1)  # pool sets
    mask_ratio: float = Field(0.5, ge=0, lt=1)  # denoising: share of 4x4 patches blanked
    noise_std: float = Field(0.3, ge=0)  # denoising: gaussian noise added to the input
    temperature: float = Field(0.2, gt=0)  # contrastive: NT-Xent temperature
    text: TextPretrainParams = TextPretrainParams()  # modality: text


class FinetuneParams(TrainParams):
    # pretrain (this project's pretrain stage), scratch, or a weights file in
    # data/external/weights/ (safetensors or a torch state dict)
    init_from: str = "pretrain"
    strategy: Literal[STRATEGIES] = "full"  # type: ignore[valid-type]
    last_n_blocks: int = Field(1, ge=0)  # strategy last_n
    unfreeze_every: int = Field(3, ge=1)  # strategy gradual: epochs between unfreezing blocks
    lr_decay: float = Field(0.5, gt=0, le=1)  # strategy discriminative: per-block factor
    train_bn: bool = True  # update batch-norm statistics of frozen blocks
    text: TextFinetuneParams = TextFinetuneParams()  # modality: text

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
    text: TextRegisterParams = TextRegisterParams()  # modality: text


Objective = Literal["supervised", "denoising", "contrastive"]


class ObjectiveTrial(Section):
    """One pretraining set-up in `transferline experiment objectives`: an objective,
    optionally with its own pool and epochs (else pretrain's). A plain name is short
    for {objective: name}."""

    objective: Objective
    unlabelled: list[Literal["source", "target"]] | None = Field(None, min_length=1)
    epochs: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: object) -> object:
        return {"objective": value} if isinstance(value, str) else value

    def label(self) -> str:
        parts = [self.objective]
        if self.unlabelled and self.objective != "supervised":
            parts.append("+".join(self.unlabelled))
        if self.epochs:
            parts.append(f"{self.epochs}ep")
        return "_".join(parts)


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


class ExperimentsParams(Section):
    """Read by `transferline experiment ...`, not by a pipeline stage."""

    budgets: list[int] = Field([5, 10, 25, 50, 100], min_length=1)  # labels per class
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    strategies: list[Literal[STRATEGIES]] = Field(list(STRATEGIES), min_length=1)  # type: ignore[valid-type]
    objectives: list[ObjectiveTrial] = Field(
        [ObjectiveTrial(objective=o) for o in ("supervised", "denoising", "contrastive")], min_length=1)
    workers: int = Field(1, ge=1)  # trials run at once (Prefect mapped tasks); each gets cores/workers threads
    text_models: list[TextTrial] = Field(DEFAULT_TRIALS, min_length=1)  # `transferline experiment text-models`

    @model_validator(mode="after")
    def _unique_trial_names(self) -> ExperimentsParams:
        names = [t.name for t in self.text_models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"experiments.text_models: the name {twice[0]!r} is used twice; each trial is one row "
                             "of the table, so give each a different name")
        return self


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
    modality: Literal["image", "text"] = "image"
    ingest: IngestParams
    validate_: ValidateParams = Field(alias="validate")
    split: SplitParams
    preprocess: PreprocessParams
    pretrain: PretrainParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    register_: RegisterParams = Field(alias="register")
    tracking: TrackingParams
    promote: PromoteParams = PromoteParams()
    experiments: ExperimentsParams = ExperimentsParams()
    orchestrate: OrchestrateParams = OrchestrateParams()

    @property
    def model_name(self) -> str:
        """The registered model's name for this modality."""
        return self.register_.text.model_name if self.modality == "text" else self.register_.model_name

    @model_validator(mode="after")
    def _text_tokenizer_fits_model(self) -> Params:
        if self.modality == "text":
            check_tokenizer_matches(self.preprocess.text.tokenizer, self.finetune.text.init_from)
        return self

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
        # a whole section's input (from a section-level check) would bury the message: that one names the value
        quiet = e["type"] in ("missing", "extra_forbidden") or isinstance(e.get("input"), dict)
        got = "" if quiet else f" (got {e.get('input')!r})"
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
