"""Masked-LM pretraining (and its resume), the fine-tuning strategies, the
BiLSTM baseline and MiniLM, each for a few steps on a slice of Rotten Tomatoes."""

from __future__ import annotations

import pytest
import torch

from text_helpers import run_stages, small_starts, tiny_text_raw
from transferline.checkpoint import load_weights, read_meta
from transferline.config import parse_params
from transferline.io import read_json
from transferline.paths import Paths
from transferline.text import evaluate, finetune, preprocess, pretrain
from transferline.text import models as tm
from transferline.text import strategies as ts


@pytest.fixture(scope="module")
def text_project(tmp_path_factory) -> Paths:
    """ingest -> validate -> split -> preprocess -> pretrain on the real data, tiny settings."""
    root = tmp_path_factory.mktemp("text")
    params = parse_params(tiny_text_raw())
    paths = params.paths.under(root)
    run_stages(params, paths, "ingest", "validate", "split", "preprocess", "pretrain")
    return paths


def test_mlm_pretraining_learns_and_resumes(text_project):
    paths = text_project
    history = read_json(paths.history("pretrain"))
    assert [h["step"] for h in history] == [6, 12]
    assert history[-1]["val_loss"] < history[0]["val_loss"] + 0.05  # not diverging
    assert history[0]["train_loss"] < 7.0  # below chance on an 800-word vocabulary (ln 800 = 6.7) + slack
    meta = read_meta(paths.weights("pretrain"))
    assert meta["objective"] == "masked-lm"
    first = load_weights(paths.weights("pretrain"))

    # more steps: resumes at step 12 from the checkpoint and continues the same history
    longer = parse_params(tiny_text_raw(pretrain={"steps": 18}))
    resumed = pretrain.run(longer, paths)
    assert [h["step"] for h in resumed] == [6, 12, 18] and resumed[:2] == history
    after = load_weights(paths.weights("pretrain"))
    assert not torch.equal(first["embeddings.word_embeddings.weight"], after["embeddings.word_embeddings.weight"])


def _train(params, paths, init, kind, strategy, name):
    train = params.text.training_for(init).model_copy(update={"lr": 1e-3, "epochs": 1})
    hist = finetune.train_one(params, paths, name, init, kind, strategy, train)
    return hist, load_weights(paths.weights(name))


def test_strategies_and_bilstm(text_project):
    paths = text_project
    params = parse_params(tiny_text_raw(finetune={"max_train_steps": 3}))
    pretrained = load_weights(paths.weights("pretrain"))

    _, full = _train(params, paths, "pretrain", "encoder", "full", "full")
    _, frozen = _train(params, paths, "pretrain", "encoder", "frozen", "frozen")
    _, lora = _train(params, paths, "pretrain", "encoder", "lora", "lora")
    for key, value in pretrained.items():
        assert torch.equal(frozen[f"encoder.{key}"], value), key  # frozen: the encoder never moved
    q = "encoder.encoder.layer.0.attention.self.query.weight"
    k = "encoder.encoder.layer.0.attention.self.key.weight"
    assert not torch.equal(full[k], pretrained[k[8:]])  # full: everything moves
    # LoRA merged into a plain classifier: query/value changed, key untouched, no adapter tensors left
    assert not torch.equal(lora[q], pretrained[q[8:]]) and torch.equal(lora[k], pretrained[k[8:]])
    assert set(lora) == set(full)
    model = tm.build_classifier(read_meta(paths.weights("lora")))
    model.load_state_dict(lora)

    enc = tm.build_classifier(read_meta(paths.weights("full")))
    groups = ts.param_groups(enc, "discriminative", 1e-3, 0.5, 0.0)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 5e-4, 2.5e-4])  # head, layer 0, embeddings

    hist, lstm = _train(params, paths, "scratch", "bilstm", "full", "bilstm")
    assert read_meta(paths.weights("bilstm"))["arch"] == "bilstm" and "lstm.weight_ih_l0" in lstm
    assert 0.0 <= hist[0]["val_acc"] <= 1.0 and hist[0]["train_loss"] < 1.0


class ParityOfLength(torch.nn.Module):
    """Class 0 for an even number of tokens, 1 for odd: every text's answer is known."""

    def forward(self, input_ids, attention_mask):
        odd = (attention_mask.sum(1) % 2).float()
        return torch.stack([1 - odd, odd], 1)


def test_finetune_and_evaluate_stage_report_transfer_gain(text_project):
    paths = text_project
    params = parse_params(tiny_text_raw(finetune={"starts": small_starts(epochs=3)}))
    finetune.run(params, paths)
    metrics = evaluate.run(params, paths)
    assert metrics["n_test"] == 255
    assert metrics["transfer_gain"]["accuracy"] == pytest.approx(
        metrics["finetune"]["accuracy"] - metrics["scratch"]["accuracy"], abs=1e-4)
    assert read_json(paths.report("metrics")) == metrics
    assert (paths.plots / "confusion_matrix.png").stat().st_size > 5000

    # the registered model (serving.py: raw strings, batched by length) predicts what evaluate scored
    from transferline.io import write_json
    from transferline.text import data as td
    from transferline.text.serving import TextClassifier

    prep = td.processed_meta(paths)
    labels = write_json(paths.reports / "serving_labels.json", {k: prep[k] for k in ("classes", "max_length", "special_ids")})
    served = TextClassifier().load(str(paths.weights("finetune")), str(td.tokenizer_file(paths)), str(labels))
    texts = [r["text"] for r in td.read_jsonl(td.split_file(paths, "test"))]
    _, predicted = evaluate.test_predictions(tm.load_classifier(paths.weights("finetune")), params, paths, prep)
    served_labels = served.predict(None, texts)
    agree = sum(a == prep["classes"][b] for a, b in zip(served_labels, predicted.tolist())) / len(texts)
    assert len(served_labels) == len(texts) and agree >= 0.99, agree  # a float tie may differ
    # in input order: a model whose answer is the parity of each text's token count
    served.model = ParityOfLength()
    tokens = [sum(e.attention_mask) for e in served.tokenizer.encode_batch(texts)]
    assert served.predict(None, texts) == [prep["classes"][n % 2] for n in tokens]


def test_minilm_lora_few_steps(tmp_path, text_project):
    """The packaged all-MiniLM-L6-v2: its own tokenizer, LoRA, two steps, merged weights."""
    params = parse_params(tiny_text_raw(preprocess={"tokenizer": "minilm"},
                                        finetune={"candidates": ["scratch", "minilm"], "max_train_steps": 2,
                                                  "starts": {"minilm": {"lr": 5e-5, "epochs": 1, "batch_size": 8}}}))
    # the project's raw data and split, re-tokenized and trained in a folder of its own
    paths = params.paths.under(tmp_path).model_copy(update={"raw": text_project.raw, "split": text_project.split})
    meta = preprocess.run(params, paths)
    assert meta["target"]["vocab_size"] == 30522
    hist, weights = _train(params, paths, "minilm", "encoder", "lora", "minilm")
    assert weights["encoder.embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert hist[0]["val_acc"] >= 0.0


def test_continued_pretraining_of_minilm_few_steps(tmp_path, text_project):
    """pretrain.text.continue_from: minilm trains MiniLM's own weights on the corpus (the tokenizer
    follows: auto); finetune's `pretrain` start is then MiniLM-shaped and takes MiniLM's values.
    With steps: 0 pretrain writes only a marker, and starting from it fails with the key to set."""
    from transferline.errors import StageError
    from transferline.text.weights import load_pretrained_encoder
    from transferline.config.text import minilm_path

    raw = tiny_text_raw(preprocess={"tokenizer": "auto"},
                        pretrain={"continue_from": "minilm", "steps": 2, "batch_size": 8, "eval_every": 2},
                        finetune={"candidates": ["scratch", "pretrain"], "max_train_steps": 1,
                                  "starts": {"minilm": {"lr": 5e-5, "epochs": 1, "batch_size": 8}}})
    params = parse_params(raw)
    assert params.text.tokenizer == "minilm" and params.text.training_for("pretrain").batch_size == 8
    paths = params.paths.under(tmp_path).model_copy(update={"raw": text_project.raw, "split": text_project.split})
    preprocess.run(params, paths)
    history = pretrain.run(params, paths)
    assert [h["step"] for h in history] == [2] and 0.0 <= history[0]["val_acc"] <= 1.0
    meta = read_meta(paths.weights("pretrain"))
    assert (meta["continued_from"], meta["steps"]) == ("minilm", 2)
    moved = load_weights(paths.weights("pretrain"))["encoder.layer.0.attention.self.query.weight"]
    original = load_pretrained_encoder(minilm_path()).state_dict()["encoder.layer.0.attention.self.query.weight"]
    assert moved.shape == (384, 384) and not torch.equal(moved, original)
    finetune.train_one(params, paths, "tapt", "pretrain", "encoder", "full")
    saved = read_meta(paths.weights("tapt"))
    assert (saved["continued_from"], saved["batch_size"], saved["lr"]) == ("minilm", 8, 5e-5)

    off = parse_params(tiny_text_raw(pretrain={"continue_from": "minilm", "steps": 0}, preprocess={"tokenizer": "auto"},
                                     finetune={"candidates": ["scratch", "minilm"]}))
    assert pretrain.run(off, paths) == [] and read_meta(paths.weights("pretrain"))["objective"] == "none"
    with pytest.raises(StageError, match="pretrain.text.steps was 0"):
        finetune.train_one(off, paths, "nothing", "pretrain", "encoder", "full")
