"""The base of every params.yaml section: frozen, unknown keys rejected, no inf/NaN."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # allow_inf_nan=False: `lr: .inf` would validate against gt=0 and train on NaN loss
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)
