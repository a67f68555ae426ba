"""Edit params.yaml in place, one key at a time: `--set`, `--modality`.

Values live in params.yaml like every value, so DVC sees a change (the
stages that list the key's section rerun) and later runs, `dvc repro`
included, keep it. Only the line of the edited key changes; comments, order
and the rest of the file stay as they are (a YAML round trip would drop the
comments that document every value). Block values (a mapping or a list
spread over lines) are refused: edit those in the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")  # 3e-4: YAML 1.1 reads it as a string


class EditError(ValueError):
    """The key cannot be edited in the file's text; the message names it."""


def parse_value(text: str) -> Any:
    """A command-line value as YAML reads it (3e-4 included: a float, as in YAML 1.2)."""
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def format_value(value: Any) -> str:
    """One-line YAML for a scalar or a flow list/mapping."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _split_comment(rest: str) -> tuple[str, str, int]:
    """(value, '# comment', its column in `rest`) of the text after `key:`; a '#' inside quotes is not one."""
    quote = None
    for i, ch in enumerate(rest):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote == ch else ch
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].strip(), rest[i:].strip(), i
    return rest.strip(), "", 0


def set_key(text: str, key: str, value: Any) -> str:
    """`text` with the dotted `key` set to `value`; a key the file lacks is added under its section."""
    parts = key.split(".")
    lines = text.splitlines(keepends=True)
    start, end, indent = 0, len(lines), -1  # the block being searched: lines[start:end], deeper than indent
    for depth, part in enumerate(parts):
        child_indent, found = None, None
        for i in range(start, end):
            m = _KEY.match(lines[i].rstrip("\n"))
            if m is None:
                continue
            ind = len(m["indent"])
            if ind <= indent:
                end = i
                break
            child_indent = ind if child_indent is None else child_indent
            if ind == child_indent and m["key"] == part:
                found = i
                break
        if found is None:
            if depth < len(parts) - 1:
                raise EditError(f"{key}: section {'.'.join(parts[: depth + 1])} is not in the file; add it there")
            pad = " " * (child_indent if child_indent is not None else indent + 2)
            lines.insert(start, f"{pad}{part}: {format_value(value)}\n")
            return "".join(lines)
        m = _KEY.match(lines[found].rstrip("\n"))
        assert m is not None
        if depth == len(parts) - 1:
            old, comment, column = _split_comment(m["rest"])
            if not old:
                raise EditError(f"{key}: a block value (a mapping or a list over several lines); edit it in the file")
            newline = "\n" if lines[found].endswith("\n") else ""
            head = f"{m['indent']}{part}: {format_value(value)}"
            if comment:  # keep the comment in its column when the new value fits
                head = head.ljust(len(m["indent"]) + len(part) + 1 + column - 1) + " " + comment
            lines[found] = head + newline
            return "".join(lines)
        start, indent = found + 1, len(m["indent"])
        end = next((j for j in range(start, len(lines)) if (k := _KEY.match(lines[j].rstrip("\n")))
                    and len(k["indent"]) <= indent), len(lines))
    raise EditError(f"{key}: empty key")


def set_values(path: str | Path, values: dict[str, Any]) -> bool:
    """Write each dotted key's value into the params file; True if the file changed."""
    path = Path(path)
    text = path.read_text()
    new = text
    for key, value in values.items():
        new = set_key(new, key, value)
    if new != text:
        path.write_text(new)
    return new != text


def set_modality(path: str | Path, modality: str) -> bool:
    """Set the top-level `modality:` of a params file; True if the file changed."""
    return set_values(path, {"modality": modality})


def full_key(key: str, modality: str) -> str:
    """`finetune.lr` -> `finetune.image.lr`: a stage section's key without its
    modality means the active modality's sub-section."""
    from transferline.config import MODALITIES, MODALITY_SECTIONS

    parts = key.split(".")
    if len(parts) >= 2 and parts[0] in MODALITY_SECTIONS and parts[1] not in MODALITIES:
        parts.insert(1, modality)
    return ".".join(parts)


def parse_sets(items: list[str], raw: dict) -> dict[str, Any]:
    """["finetune.lr=3e-4", ...] -> {"finetune.image.lr": 0.0003, ...} (modality from the sets, else `raw`)."""
    pairs: list[tuple[str, Any]] = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise EditError(f"--set {item!r}: expected KEY=VALUE, e.g. --set finetune.lr=3e-4")
        pairs.append((key.strip(), parse_value(text)))
    modality = next((v for k, v in pairs if k == "modality"), raw.get("modality", "image"))
    return {full_key(k, str(modality)): v for k, v in pairs}


def get_key(raw: dict, key: str) -> Any:
    """The value at a dotted key, or None when absent."""
    value: Any = raw
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def with_values(raw: dict, values: dict[str, Any]) -> dict:
    """A deep copy of `raw` with each dotted key set (sections created as needed)."""
    import copy

    out = copy.deepcopy(raw)
    for key, value in values.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return out
