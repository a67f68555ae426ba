"""The registered text model: raw strings in, labels out.

Logged as an MLflow "model from code" (nothing pickled). Artifacts:
  weights    safetensors state dict; its "meta" JSON rebuilds the architecture
  tokenizer  tokenizer.json (the `tokenizers` library)
  labels     JSON: classes, max_length, special_ids
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

BATCH = 256
CHUNK = 16 * BATCH  # texts tokenized at once: bounds the memory of a large request


class TextClassifier(mlflow.pyfunc.PythonModel):
    """Tokenizer + classifier, predicting class names for raw strings."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.load(context.artifacts["weights"], context.artifacts["tokenizer"], context.artifacts["labels"])

    def load(self, weights_path: str, tokenizer_path: str, labels_path: str) -> TextClassifier:
        from tokenizers import Tokenizer

        from transferline.checkpoint import load_weights, read_meta
        from transferline.text.models import build_classifier

        with open(labels_path) as f:
            info = json.load(f)
        self.classes: list[str] = [str(c) for c in info["classes"]]
        self.pad_id = int(info["special_ids"]["[PAD]"])
        meta = read_meta(weights_path)
        if int(meta["num_classes"]) != len(self.classes):
            raise ValueError(f"weights predict {meta['num_classes']} classes, labels list {len(self.classes)}")
        self.model = build_classifier(meta)
        self.model.load_state_dict(load_weights(weights_path))
        self.model.eval()
        self.tokenizer = Tokenizer.from_file(tokenizer_path)
        self.tokenizer.enable_truncation(int(info["max_length"]))
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token="[PAD]")
        return self

    @staticmethod
    def _texts(model_input: Any) -> list[str]:
        if isinstance(model_input, pd.DataFrame):
            col = "text" if "text" in model_input.columns else model_input.columns[0]
            values = model_input[col].tolist()
        elif isinstance(model_input, (pd.Series, np.ndarray)):
            values = np.asarray(model_input).reshape(-1).tolist()
        elif isinstance(model_input, str):
            values = [model_input]
        else:
            values = list(model_input)
        bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
        if bad:
            raise ValueError(f"expected strings; item(s) {bad[:10]} are {type(values[bad[0]]).__name__}")
        return values

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        """Class names for raw strings (a list, a Series, or a DataFrame with a `text` column)."""
        from transferline.text.models import predict_logits

        texts = self._texts(model_input)
        labels: list[str] = []
        for start in range(0, len(texts), CHUNK):
            enc = self.tokenizer.encode_batch(texts[start : start + CHUNK])
            ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
            # batches of texts of similar length (as evaluate predicts): a random batch of short
            # reviews was padded to its longest one, 2x the work on the gate's test split
            logits = predict_logits(self.model, ids, self.pad_id, BATCH, torch.device("cpu"))
            labels.extend(self.classes[i] for i in logits.argmax(1).tolist())
        return labels


mlflow.models.set_model(TextClassifier())
