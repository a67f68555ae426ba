"""The run's DVC process parses a YAML text once (transferline.dvcrun).

DVC parses params.yaml again for each params dependency of a stage, when it checks the
stage and when it writes the lock: 8 times a stage with our dvc.yaml, 15-25 ms each with
ruamel on two cores, so 0.1-0.2 s a stage of the same text, and dvc.yaml once more per
stage. In the one DVC process that serves a whole run, `parse_once()` answers a text it
has parsed before with a copy of that parse. The text itself is the key: an edited file
is parsed anew, and DVC sees exactly what it would have seen. Only DVC's "safe" parse is
kept (the round-trip parse that rewrites a file keeps comments and is left alone), and
`dvc repro` from a shell never comes here.

After each stage DVC also rewrites dvc.lock, and reads it for that with ruamel's round-trip
parser (pure Python, it keeps comments): 0.2 s a stage on our 33 KB lock, against 0.03 s for
its safe (C) parse. `locks_rewritten_from_safe_parse()` has it take the safe parse there: DVC
writes dvc.lock itself, with no comment to keep, and the file it dumps is byte for byte the
same (tests/test_dvcrun.py). dvc.yaml, which people comment, keeps the round trip.
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

# Where DVC holds its YAML parser: the function and the two modules that import it by name
# (dvc.utils.strictyaml: dvc.yaml and dvc.lock; dvc.utils.serialize: PARSERS). A name that
# is missing in another DVC version is left alone; that DVC parses as always.
HOLDERS = ("dvc.utils.serialize._yaml", "dvc.utils.serialize", "dvc.utils.strictyaml")
KEPT = 16  # texts: params.yaml, dvc.yaml and a few lock files at most in one run


def parse_once() -> None:
    """Make DVC's YAML parser, in this process, parse each distinct text once."""
    import importlib

    from dvc.utils.serialize import _yaml

    parse = _yaml.parse_yaml
    if hasattr(parse, "kept"):  # patched already
        return

    @functools.lru_cache(maxsize=KEPT)
    def first_parse(text: str, path: str) -> Any:
        return parse(text, path)

    def parse_yaml(text: str, path: Any, typ: str = "safe") -> Any:
        if typ != "safe":
            return parse(text, path, typ)
        return copy.deepcopy(first_parse(text, str(path)))  # DVC may change what it gets: never the kept one

    parse_yaml.kept = first_parse  # type: ignore[attr-defined]  # its cache_info() says what was parsed
    for name in HOLDERS:
        module = importlib.import_module(name)
        if getattr(module, "parse_yaml", None) is parse:
            module.parse_yaml = parse_yaml  # type: ignore[attr-defined]


def locks_rewritten_from_safe_parse() -> None:
    """Make DVC, in this process, read a lock file it rewrites with its safe parser."""
    from dvc.utils.serialize import _yaml

    round_trip = getattr(_yaml, "parse_yaml_for_update", None)  # what DVC's modify_yaml calls by name
    if round_trip is None or hasattr(round_trip, "safe_for_locks"):  # another DVC version, or patched already
        return

    def parse_yaml_for_update(text: str, path: Any) -> Any:
        if os.fspath(path).endswith(".lock"):
            return _yaml.parse_yaml(text, path)  # through parse_once's copy, where it is on
        return round_trip(text, path)

    parse_yaml_for_update.safe_for_locks = True  # type: ignore[attr-defined]
    _yaml.parse_yaml_for_update = parse_yaml_for_update  # type: ignore[attr-defined]
