"""Imports point one way: entry points (CLI, flows, tasks, experiments) ->
modalities (image, text) -> shared core. No circles, no library module
reaching up into an entry point, no modality importing the other."""

from __future__ import annotations

from imports import MODALITIES, direct_imports, project_modules

ENTRY_POINTS = ("tasks", "flows", "transferline.cli", "transferline.experiments")


def layer(name: str) -> str:
    if name.startswith(ENTRY_POINTS):
        return "entry"
    for modality in MODALITIES:
        if name == f"transferline.{modality}" or name.startswith(f"transferline.{modality}."):
            return modality
    return "core"


def edges() -> list[tuple[str, str]]:
    return [(m, d) for m in project_modules() for d in sorted(direct_imports(m))]


def test_the_library_never_imports_an_entry_point():
    wrong = [f"{m} -> {d}" for m, d in edges() if layer(m) != "entry" and layer(d) == "entry"]
    assert not wrong, "library modules reach up into entry points:\n" + "\n".join(wrong)


def test_core_imports_no_modality_and_modalities_not_each_other():
    wrong = [f"{m} -> {d}" for m, d in edges()
             if (layer(m) == "core" and layer(d) in MODALITIES)
             or (layer(m) in MODALITIES and layer(d) in MODALITIES and layer(m) != layer(d))]
    assert not wrong, "imports that point sideways or up:\n" + "\n".join(wrong)


def test_no_import_circles():
    graph = {m: set(direct_imports(m)) for m in project_modules()}
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_graph_is_read_from_the_real_tree():
    """A guard for the three tests above: they must see the modules and edges that exist."""
    modules = project_modules()
    assert {"tasks._stage", "transferline.config", "transferline.image.finetune", "transferline.text.finetune"} \
        <= set(modules)
    assert "transferline.image.models" in direct_imports("transferline.image.finetune")
    assert layer("transferline.cli") == "entry" and layer("transferline.text.data") == "text"
