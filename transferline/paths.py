"""Where the stages read and write: the `paths` section of params.yaml.

dvc.yaml uses the same values through templating (`${paths.processed}`),
and every stage function takes a `Paths`, so the pipeline, the experiments
(`Paths.under(trial_folder)`) and the tests call the same code on their own
folders. The names of files inside these folders are part of each stage's
contract and are spelled here once.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Paths(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    raw: Path = Path("data/raw")  # ingest
    split: Path = Path("data/split")  # split
    processed: Path = Path("data/processed")  # preprocess
    models: Path = Path("models")  # pretrain, finetune (+ scratch)
    reports: Path = Path("reports")  # every stage's report, metrics and plots

    def under(self, root: str | Path) -> Paths:
        """The same layout below another folder (an experiment trial, a test)."""
        return Paths(**{k: Path(root) / v for k, v in self.model_dump().items()})

    # files the stages hand to each other
    @property
    def raw_meta(self) -> Path:
        return self.raw / "meta.json"

    @property
    def processed_meta(self) -> Path:
        return self.processed / "meta.json"

    def cache(self, name: str) -> Path:
        """A preprocessed tensor set: source, target or pool."""
        return self.processed / f"{name}.safetensors"

    def model_dir(self, name: str) -> Path:
        """pretrain, finetune or scratch."""
        return self.models / name

    def weights(self, name: str) -> Path:
        return self.models / name / "model.safetensors"

    def checkpoint(self, name: str) -> Path:
        return self.models / name / "checkpoint.safetensors"

    def history(self, name: str) -> Path:
        return self.reports / f"{name}_history.json"

    def report(self, stage: str) -> Path:
        """reports/<stage>.json: validate, split, metrics, per_class, register, promote."""
        return self.reports / f"{stage}.json"

    @property
    def plots(self) -> Path:
        return self.reports / "plots"

    @property
    def experiments(self) -> Path:
        return self.reports / "experiments"
