"""The registered model: raw images in, class names out.

Logged as an MLflow "model from code": MLflow stores this file and runs it
on load, so nothing is pickled. Preprocessing (scale, normalise, layout)
lives here, not in the caller, so a served model needs only pixels.

Artifacts:
  weights     safetensors state dict; its "meta" JSON holds arch,
              num_classes and in_channels
  preprocess  JSON: mean, std (per channel), classes, image_size, channels
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from transferline.checkpoint import load_weights, read_meta
from transferline.image.models import build_model

# Bounds memory for a large request. On a CPU 128 scored the test split 1.3-1.5x faster than
# 512 (small_cnn, 28x28, two cores: a batch's activations stay in cache).
BATCH = 128


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """SmallCNN plus its preprocessing, predicting class names."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.load(context.artifacts["weights"], context.artifacts["preprocess"])

    def load(self, weights_path: str, preprocess_path: str) -> ImageClassifier:
        """Load from the two artifact files; also used to predict before logging."""
        meta = read_meta(weights_path)
        with open(preprocess_path) as f:
            prep = json.load(f)
        self.classes: list[str] = [str(c) for c in prep["classes"]]
        self.size = int(prep["image_size"])
        self.channels = int(prep["channels"])
        num_classes = int(meta.get("num_classes", len(self.classes)))
        in_channels = int(meta.get("in_channels", self.channels))
        if num_classes != len(self.classes) or in_channels != self.channels:
            raise ValueError(
                f"weights ({num_classes} classes, {in_channels} channels) do not match preprocess "
                f"({len(self.classes)} classes, {self.channels} channels)"
            )
        self.mean = torch.tensor(prep["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(prep["std"], dtype=torch.float32).view(1, -1, 1, 1)
        if self.mean.shape[1] != self.channels or self.std.shape[1] != self.channels:
            raise ValueError(f"preprocess mean/std need {self.channels} values each (one per channel)")
        self.model = build_model(meta.get("arch", "small_cnn"), num_classes, in_channels)
        self.model.load_state_dict(load_weights(weights_path))
        self.model.eval()
        return self

    def _to_nchw(self, model_input: Any) -> np.ndarray:
        """Any accepted layout -> float32 (N, C, H, W), values still 0..255."""
        if isinstance(model_input, pd.DataFrame):
            if model_input.shape[1] == 1 and model_input.dtypes.iloc[0] == object:  # noqa: E721 (a pandas dtype)
                # One column holding an image (nested list/array) per row, as JSON clients send.
                rows = [np.asarray(v) for v in model_input.iloc[:, 0]]
                x = np.stack(rows) if rows else np.zeros((0, self.channels * self.size**2), np.uint8)
            else:
                x = model_input.to_numpy()
        else:
            x = np.asarray(model_input)
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"expected numeric pixel values (0..255), got dtype {x.dtype}")
        c, s = self.channels, self.size
        expected = f"(N, {s}, {s})" if c == 1 else f"(N, {c}, {s}, {s}) or (N, {s}, {s}, {c})"
        if x.ndim == 2:
            # One flattened image per row, in (C, H, W) order like data/ arrays.
            if x.shape[1] != c * s * s:
                raise ValueError(
                    f"flattened images need {c * s * s} values per row ({c}x{s}x{s}), got {x.shape[1]}; "
                    f"or send an array of shape {expected}"
                )
            x = x.reshape(len(x), c, s, s)
        elif x.ndim == 3:
            x = x[:, None]  # greyscale (N, H, W)
            if c == 3:
                x = np.repeat(x, 3, axis=1)
        elif x.ndim == 4:
            if x.shape[1] != c and x.shape[-1] == c:
                x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
            elif x.shape[1] != c:
                raise ValueError(f"images have {x.shape[1]} channels, the model needs {c}; expected {expected}")
        else:
            raise ValueError(f"expected images of shape {expected}, got an array of shape {x.shape}")
        if x.shape[2:] != (s, s):
            # Adaptive pooling would run on any size, but silently wrong: resize before sending.
            raise ValueError(f"images must be {s}x{s} pixels, got {x.shape[2]}x{x.shape[3]}; expected {expected}")
        return x.astype(np.float32, copy=False)

    # MLflow 3 reads the model_input hint as an input schema: Any or a Union
    # warns, no hint warns too. np.ndarray is one it takes as "no schema from
    # the hint" (a DataFrame still gets through); the logged signature rules.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> list[str]:
        """Class names for raw images: (N, H, W), (N, C, H, W), (N, H, W, C) or one flat image per row."""
        x = self._to_nchw(model_input)
        labels: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(x), BATCH):
                batch = torch.from_numpy(np.ascontiguousarray(x[start : start + BATCH]))
                batch = (batch / 255.0 - self.mean) / self.std
                labels.extend(self.classes[i] for i in self.model(batch).argmax(dim=1).tolist())
        return labels


mlflow.models.set_model(ImageClassifier())
