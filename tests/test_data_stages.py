"""ingest, validate, split and preprocess on small slices of the real data."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import DOWNLOADS, MLFLOW_ENV, ROOT, tiny_raw_params
from transferline.artifacts import fetch_member
from transferline.config import parse_params
from transferline.config.image import ANIMAL_MNIST, SplitParams
from transferline.errors import StageError
from transferline.image import preprocess, split, validate
from transferline.image.data import TEST, TRAIN, VAL, assign_target, image_hashes, load_set, uint8_pixels
from transferline.image.files import load_folder, split_folders
from transferline.image.validate import budget_problem, fitting_budget
from transferline.io import load_arrays, read_json, save_arrays
from test_cli_light import import_chains, who_imported


def test_builtin_target_is_verified_animal_mnist(builtin_sets):
    x, y = builtin_sets["target"]
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10
    xs, ys = builtin_sets["source"]
    assert xs.shape == (70000, 1, 28, 28) and set(np.unique(ys)) == set(range(10))


def test_uint8_pixels_rounds_as_the_expression_it_replaces():
    edges = np.array([0, 0.5 / 256, 1.5 / 256, 254.5 / 256, 255.5 / 256, np.nextafter(1, 0)], np.float32)
    x = np.concatenate([np.random.default_rng(0).random(10_000, dtype=np.float32), edges])
    expected = np.clip(np.rint(x * 256), 0, 255).astype(np.uint8)  # load_mnist's conversion before
    assert np.array_equal(uint8_pixels(x.copy()), expected)


def test_tampered_artifact_is_refused(tmp_path):
    member = list(ANIMAL_MNIST.artifact.members)[1]
    fetch_member(ANIMAL_MNIST.artifact, member, download_dir=DOWNLOADS)  # the pinned wheel, once per machine
    wheel = next(DOWNLOADS.glob("animal_mnist-0.4-*.whl"))
    copy = tmp_path / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(copy, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("animal_label_version_3.gz"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(item, data)
    with pytest.raises(StageError, match="sha256"):
        fetch_member(ANIMAL_MNIST.artifact, member, download_dir=tmp_path)


def test_folder_ingest_reads_formats_and_reports_unreadable(tmp_path):
    for cls, fmt in (("cat", "PNG"), ("dog", "JPEG"), ("cow", "BMP")):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), (i * 40, 80, 160)).save(tmp_path / cls / f"{i}.{fmt.lower()}", fmt)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    x, y, classes, bad, given = load_folder(tmp_path, size=28, channels=1)
    assert classes == ["cat", "cow", "dog"]
    assert x.shape == (9, 1, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [3, 3, 3]
    assert len(bad) == 1 and bad[0].startswith("dog/broken.png")


def test_folder_ingest_skips_what_operating_systems_leave(tmp_path):
    """Thumbnail caches, folder settings and unzipped macOS resource forks are not images the
    user meant: skipped like hidden files, never reported as unreadable or taken for a class."""
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.new("L", (30, 30), 90).save(tmp_path / cls / "a.png")
        (tmp_path / cls / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnail cache")
        (tmp_path / cls / "desktop.ini").write_text("[.ShellClassInfo]\n")
        (tmp_path / cls / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "__MACOSX" / "cat").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "cat" / "._a.png").write_bytes(b"\0\5\x16\7 resource fork")
    x, y, classes, bad, given = load_folder(tmp_path, size=28, channels=1)
    assert classes == ["cat", "dog"] and bad == [] and y.tolist() == [0, 1]


def test_a_folder_laid_out_by_split_is_read_by_class(tmp_path):
    """folder/train/<class>, folder/Val/<class>, folder/test/<class> (as data sets ship): the
    classes are read across the split folders, pooled, not taken for classes "train" and "test";
    a class missing from one split still counts. A class folder named like a split that holds
    images is a class."""
    layout = {"train": {"cat": 3, "dog": 3}, "Val": {"cat": 1}, "test": {"cat": 2, "dog": 1}}
    for split_name, counts in layout.items():
        for cls, n in counts.items():
            (tmp_path / split_name / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (30, 30), 40 * i).save(tmp_path / split_name / cls / f"{i}.png")
    (tmp_path / "train" / "labels.txt").write_text("a file beside the class folders: not a class")
    x, y, classes, bad, given = load_folder(tmp_path, size=28, channels=1)
    assert classes == ["cat", "dog"] and bad == [] and np.bincount(y).tolist() == [6, 4]
    assert split_folders(tmp_path) == ["Val", "test", "train"]
    assert sorted(zip(y.tolist(), given.tolist())) == [(0, 0)] * 3 + [(0, 1)] + [(0, 2)] * 2 + [(1, 0)] * 3 + [(1, 2)]

    flat = tmp_path / "flat"
    for cls in ("train", "zebra"):  # "train" holds images: a class, as always
        (flat / cls).mkdir(parents=True)
        Image.new("L", (30, 30), 90).save(flat / cls / "a.png")
    x, y, classes, bad, given = load_folder(flat, size=28, channels=1)
    assert classes == ["train", "zebra"] and split_folders(flat) == [] and given is None
    for cls, sub in (("train", "2021"), ("val", "2022")):  # classes named like splits, their own sub-folders
        (tmp_path / "dated" / cls / sub).mkdir(parents=True)
        Image.new("L", (30, 30), 90).save(tmp_path / "dated" / cls / sub / "a.png")
    x, y, classes, bad, given = load_folder(tmp_path / "dated", size=28, channels=1)
    assert classes == ["train", "val"] and given is None


def test_a_folders_own_split_is_kept():
    """The folder's test images are the test set, all of them; the validation and training images
    per class come from its own validation and training images (the budgets still cap them);
    without a validation folder they are cut from the training images. No split given: the
    seeded cut as always."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    given = np.tile(np.repeat([TRAIN, VAL, TEST], [40, 12, 8]), 2).astype(np.int8)
    hashes = np.array([f"{i}" for i in range(len(y))])
    cfg = SplitParams(test_fraction=0.2, labels_per_class=30, val_per_class=10)
    train, val, test = assign_target(y, hashes, cfg, seed=3, given=given)
    assert (given[test] == TEST).all() and len(test) == 16
    assert (given[val] == VAL).all() and len(val) == 20 and (given[train] == TRAIN).all() and len(train) == 60
    no_val = np.where(given == VAL, TRAIN, given).astype(np.int8)
    train, val, test = assign_target(y, hashes, cfg, seed=3, given=no_val)
    assert (no_val[test] == TEST).all() and len(test) == 16 and len(val) == 20 and len(train) == 60
    assert not set(train) & set(val) and (no_val[np.concatenate([train, val])] == TRAIN).all()
    plain = assign_target(y[rng.permutation(len(y))], hashes, cfg, seed=3)
    assert [len(p) for p in plain] == [60, 20, 24]  # test_fraction of each class when no split is given


def test_large_jpegs_decode_at_a_reduced_scale_and_small_ones_exactly(tmp_path):
    """A photo is decoded at 1/8 scale (load_folder: img.draft) and still matches the full decode
    within a few grey levels; a small JPEG is decoded whole, so its pixels are unchanged."""
    rng = np.random.default_rng(0)
    for name, side in (("big", 1600), ("small", 64)):
        (tmp_path / name).mkdir()
        for i in range(3):
            smooth = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
            smooth.resize((side * 4 // 3, side), Image.Resampling.BICUBIC).save(tmp_path / name / f"{i}.jpg", quality=90)
    x, y, classes, bad, given = load_folder(tmp_path, 28, 1)
    assert classes == ["big", "small"] and not bad
    for img, label, file in zip(x, y, sorted(tmp_path.glob("*/*.jpg"))):
        with Image.open(file) as full:
            whole = np.asarray(full.convert("L").resize((28, 28), Image.Resampling.BILINEAR), np.int16)
        diff = np.abs(img[0].astype(np.int16) - whole)
        # big: not the full decode (so it was not decoded whole), yet close to it
        assert (0 < diff.mean() <= 1 and diff.max() <= 8) if label == 0 else diff.max() == 0, (file, diff.mean())


def test_validate_passes_real_slice(tiny_raw, tiny_params):
    report = validate.run(tiny_params, tiny_params.paths)
    assert report["ok"] and report["target"]["leaked_train_test"] == 0
    assert read_json("reports/validate.json")["target"]["class_counts"]["zebra"] == 40


def test_validate_and_split_keep_a_folders_own_split(tiny_raw, tiny_params):
    """A folder's own split (ingest's `split` array): the test set is its test images; a class
    missing from one side stops validate with the class and the folder to fill."""
    t = load_arrays("data/raw/target.npz")
    given = np.tile(np.repeat([TRAIN, VAL, TEST], [28, 6, 6]), 10).astype(np.int8)  # 40 a class, in class order
    save_arrays("data/raw/target.npz", **t, split=given)
    assert validate.run(tiny_params, tiny_params.paths)["ok"]
    counts = split.run(tiny_params, tiny_params.paths)
    test_images = set(image_hashes(load_arrays("data/split/target.npz")["x_test"]))
    assert test_images <= set(image_hashes(t["x"][given == TEST])) and counts["target"]["test"] >= 55
    given[:40][given[:40] == TEST] = TRAIN
    save_arrays("data/raw/target.npz", **t, split=given)
    with pytest.raises(StageError, match=f"class '{ANIMAL_MNIST.classes[0]}' has no test images in the folder's split"):
        validate.run(tiny_params, tiny_params.paths)


def test_validate_names_unreadable_files_and_bad_labels(tiny_raw, tiny_params):
    meta = read_json("data/raw/meta.json")
    meta["target"]["unreadable"] = ["cat/0001.png: UnidentifiedImageError"]
    from transferline.io import write_json

    write_json("data/raw/meta.json", meta)
    t = load_arrays("data/raw/target.npz")
    t["y"][0] = 12
    save_arrays("data/raw/target.npz", **t)
    with pytest.raises(StageError) as err:
        validate.run(tiny_params, tiny_params.paths)
    assert "cat/0001.png" in str(err.value)
    assert "labels span 0..12" in str(err.value)
    assert read_json("reports/validate.json")["ok"] is False


def test_validate_catches_leakage_when_dedupe_is_off(tiny_raw):
    params = parse_params(tiny_raw_params(split={"dedupe": False, "labels_per_class": 10, "val_per_class": 5,
                                                 "test_fraction": 0.5}))
    t = load_arrays("data/raw/target.npz")
    # duplicate every cat image: with 50% test, copies land on both sides
    cats = np.flatnonzero(t["y"] == 2)
    save_arrays("data/raw/target.npz", x=np.concatenate([t["x"], t["x"][cats]]), y=np.concatenate([t["y"], t["y"][cats]]))
    with pytest.raises(StageError, match="leakage"):
        validate.run(params, params.paths)
    ok = parse_params(tiny_raw_params(split={"dedupe": True, "labels_per_class": 10, "val_per_class": 5,
                                             "test_fraction": 0.5}))
    assert validate.run(ok, ok.paths)["target"]["leaked_train_test"] == 0


def test_split_is_deterministic_stratified_and_budgeted(tiny_raw, tiny_params):
    counts = split.run(tiny_params.model_copy(update={"seed": 7}), tiny_params.paths)
    first = load_arrays("data/split/target.npz")
    split.run(tiny_params.model_copy(update={"seed": 7}), tiny_params.paths)
    again = load_arrays("data/split/target.npz")
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert np.bincount(first["y_train"]).tolist() == [10] * 10
    assert np.bincount(first["y_val"]).tolist() == [5] * 10
    assert counts["target"]["test"] == 40  # 10% of 40 per class
    train_h, test_h = set(image_hashes(first["x_train"])), set(image_hashes(first["x_test"]))
    assert not train_h & test_h
    split.run(tiny_params.model_copy(update={"seed": 8}), tiny_params.paths)
    assert not np.array_equal(first["x_train"], load_arrays("data/split/target.npz")["x_train"])


def test_preprocess_normalises_with_train_stats(tiny_raw, tiny_params):
    split.run(tiny_params, tiny_params.paths)
    meta = preprocess.run(tiny_params, tiny_params.paths)
    target = load_set(tiny_params.paths, "target")
    assert target["x_train"].dtype == torch.float16
    assert abs(target["x_train"].float().mean().item()) < 1e-2
    assert abs(target["x_train"].float().std().item() - 1) < 1e-2
    assert meta["target"]["classes"][0] == "bear" and len(meta["target"]["mean"]) == 1


def test_data_stages_never_import_torch(tiny_raw):
    """validate, split and preprocess as DVC runs them (`python -m tasks.<stage>`): a stage imports
    what it uses, and none of these needs torch (about 3 s of a process on two cores)."""
    (tiny_raw / "params.yaml").write_text(yaml.safe_dump(tiny_raw_params()))
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env["PYTHONPATH"] = str(ROOT)  # the repository's tasks/ and transferline/, run in the project folder
    for stage in ("validate", "split", "preprocess"):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", f"tasks.{stage}"], cwd=tiny_raw, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        torch_chain = who_imported(import_chains(done.stderr), "torch")
        assert torch_chain is None, f"{stage} imported torch via {torch_chain}"
    assert load_set(parse_params(tiny_raw_params()).paths, "target")["x_train"].dtype == torch.float16


@pytest.mark.parametrize(("labels", "val"), [(50, 20), (25, 5), (1, 30), (200, 1)])
def test_the_budget_a_refusal_suggests_fits(labels, val):
    """Whatever the smallest class, the values budget_problem suggests (fitting_budget) pass it,
    never rise, and keep both budgets at one or more."""
    for smallest in range(3, 400):
        cfg = SplitParams(labels_per_class=labels, val_per_class=val, test_fraction=0.2)
        fit = fitting_budget(smallest, cfg)
        assert (budget_problem(smallest, cfg) is None) == (fit == {})
        fitted = cfg.model_copy(update=fit)
        assert budget_problem(smallest, fitted) is None, (smallest, fit)
        assert 1 <= fitted.labels_per_class <= labels and 1 <= fitted.val_per_class <= val
