"""dvc.yaml's `deps` list exactly the project code each stage runs, for each
modality: every module `python -m tasks.<stage>` imports (read from the
source, function-level imports included, plus the two imports made by name)
is declared, and every declared code file is imported."""

from __future__ import annotations

import re

import pytest
import yaml

from imports import MODALITIES, ROOT, as_files, stage_closure

SPEC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
CODE = re.compile(r"^(tasks|transferline|flows)/.*\.py$")


def declared_code(stage: str, modality: str) -> set[str]:
    """The stage's deps with ${modality} and ${paths.*} filled in, code files only."""
    out = set()
    for dep in SPEC[stage]["deps"]:
        dep = dep.replace("${modality}", modality)
        dep = re.sub(r"\$\{paths\.(\w+)\}", lambda m: PARAMS["paths"][m.group(1)], dep)
        assert "${" not in dep, f"{stage}: unexpected template in {dep}"
        if CODE.match(dep):
            out.add(dep)
        else:
            assert not dep.startswith(("tasks", "transferline", "flows")), f"{stage}: {dep} is code but not a file"
    return out


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("stage", list(SPEC))
def test_deps_are_exactly_the_code_the_stage_imports(stage, modality):
    imported = as_files(stage_closure(stage, modality))
    declared = declared_code(stage, modality)
    assert not imported - declared, f"{stage} ({modality}) imports code dvc.yaml does not list: {sorted(imported - declared)}"
    assert not declared - imported, f"{stage} ({modality}) lists code it never imports: {sorted(declared - imported)}"
    for path in declared:
        assert (ROOT / path).is_file(), f"{stage} ({modality}): {path} does not exist"


def test_the_check_sees_real_closures():
    """Guards the test above: a training stage's closure holds its model code and the schema
    of its own modality only."""
    image = as_files(stage_closure("finetune", "image"))
    assert {"transferline/image/models.py", "transferline/config/image.py", "tasks/finetune.py"} <= image
    assert not any("text" in p for p in image)
    text = as_files(stage_closure("finetune", "text"))
    assert "transferline/config/text.py" in text and not any("/image" in p for p in text)


def test_params_are_per_modality():
    """A stage reads its own modality's values only: every stage section it lists is
    `<section>.${modality}`, never a whole section that holds both modalities."""
    from transferline.config import MODALITY_SECTIONS

    for stage, spec in SPEC.items():
        for entry in spec.get("params", []):
            head = entry.split(".")[0]
            if head in MODALITY_SECTIONS:
                assert entry == f"{head}.${{modality}}", f"{stage}: params entry {entry!r} is not per modality"
