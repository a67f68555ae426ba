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

DVC then dumps the lock (and a run-cache entry) with ruamel's round-trip emitter, pure
Python too: 0.13 s a stage for our lock. `plain_dumps_in_c()` has it dump with PyYAML's
dumper and libyaml's emitter (C) instead, 0.013 s, where the two write the same bytes: plain
dicts, lists, numbers, booleans and short ASCII strings, which a DVC lock holds. Anything
else (a None, a long or non-ASCII string, a quote, a long key: where the two emitters fold,
quote or spell differently) keeps the round trip. tests/test_dvcrun.py compares the two on
the lock and on thousands of generated values. What it wrote is also kept for `parse_once`,
so the lock DVC reads at the next stage is not parsed again.
"""

from __future__ import annotations

import collections
import copy
import functools
import os
from typing import Any

# Where DVC holds its YAML parser: the function and the two modules that import it by name
# (dvc.utils.strictyaml: dvc.yaml and dvc.lock; dvc.utils.serialize: PARSERS). A name that
# is missing in another DVC version is left alone; that DVC parses as always.
HOLDERS = ("dvc.utils.serialize._yaml", "dvc.utils.serialize", "dvc.utils.strictyaml")
KEPT = 16  # texts: params.yaml, dvc.yaml and a few lock files at most in one run
# The last texts `plain_dumps_in_c` wrote -> the data it wrote, which is what parsing them gives
# (tests/test_dvcrun.py): DVC reads the lock it has just written at the next stage (0.05-0.07 s
# to parse our lock); after the lock it writes the stage's run-cache entry, so more than one.
WRITTEN: dict[str, Any] = {}
KEPT_WRITTEN = 4
# Where ruamel's two emitters write the same bytes (tests/test_dvcrun.py): keys up to KEY_CHARS
# characters, and a key with its value within LINE_CHARS, at two columns of indent a level and
# two more for a list's dash (a longer line is folded differently).
KEY_CHARS, LINE_CHARS = 40, 70


def parse_once() -> None:
    """Make DVC's YAML parser, in this process, parse each distinct text once."""
    import importlib

    from dvc.utils.serialize import _yaml

    parse = _yaml.parse_yaml
    if hasattr(parse, "kept"):  # patched already
        return

    @functools.lru_cache(maxsize=KEPT)
    def first_parse(text: str, path: str) -> Any:
        written = WRITTEN.pop(text, None)  # the lock this process has just written: what it holds
        return written if written is not None else parse(text, path)

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


def emitted_alike(data: Any, depth: int = 0, key: str = "") -> bool:
    """True where ruamel's round-trip dump of `data` and libyaml's (`_libyaml_dumper`) are the same text."""
    kind = type(data)
    if kind in (dict, collections.OrderedDict):  # DVC builds a stage's lock entry as an OrderedDict
        return all(_short(k) and len(k) <= KEY_CHARS and emitted_alike(v, depth + 1, k) for k, v in data.items())
    if kind is list:
        return all(emitted_alike(v, depth + 1, key) for v in data)
    if kind is str:
        return _short(data) and 4 * depth + len(key) + len(data) <= LINE_CHARS
    if kind is float:  # repr: up to 24 characters
        return 4 * depth + len(key) + 25 <= LINE_CHARS
    return kind in (int, bool)  # None: the round trip writes nothing, the safe dump `null`


def _short(text: Any) -> bool:
    """ASCII, printable and with no single quote (the two emitters quote it differently)."""
    return type(text) is str and text.isascii() and text.isprintable() and "'" not in text


def _libyaml_dumper() -> Any:
    """PyYAML's dumper on libyaml, resolving plain scalars by YAML 1.2 as ruamel does (DVC reads
    with ruamel): it quotes what the round trip quotes ("yes" is a string, "1e3" a float). Its
    Python side is lighter than ruamel's safe dumper's: 0.013 s for our lock against 0.037 s.
    None where PyYAML has no libyaml or ruamel no resolver table: the round trip then."""
    import yaml
    from ruamel.yaml import resolver

    if not hasattr(yaml, "CSafeDumper") or not hasattr(resolver, "implicit_resolvers"):
        return None

    class Dumper(yaml.CSafeDumper):
        yaml_implicit_resolvers: dict = {}

    for versions, tag, regexp, first in resolver.implicit_resolvers:
        if (1, 2) in versions:
            Dumper.add_implicit_resolver(tag, regexp, first)
    Dumper.add_representer(float, _float_as_ruamel_writes_it)
    Dumper.add_representer(collections.OrderedDict, Dumper.represent_dict)
    return Dumper


def _float_as_ruamel_writes_it(dumper: Any, data: float) -> Any:
    """As YAML 1.2 writes it: 1e-12, where PyYAML (YAML 1.1) writes 1.0e-12."""
    value = ".nan" if data != data else ".inf" if data == float("inf") else "-.inf" if data == -float("inf") \
        else repr(data).lower()
    return dumper.represent_scalar("tag:yaml.org,2002:float", value)


def _plain(data: Any) -> Any:
    """A copy of `data` as a YAML parse gives it: OrderedDicts as dicts."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    return [_plain(v) for v in data] if type(data) is list else data


def plain_dumps_in_c() -> None:
    """Make DVC, in this process, dump plain YAML data with libyaml's emitter (`emitted_alike`)."""
    import yaml
    from dvc.utils.serialize import _yaml

    round_trip = _yaml._dump  # what dump_yaml, dumps_yaml and modify_yaml call by name
    if hasattr(round_trip, "in_c") or (dumper := _libyaml_dumper()) is None:  # patched already, or no libyaml
        return

    def dump(data: Any, stream: Any) -> Any:
        if not emitted_alike(data):
            return round_trip(data, stream)
        text = yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
        stream.write(text)
        WRITTEN[text] = _plain(data)  # a copy: DVC may change `data` after writing it
        while len(WRITTEN) > KEPT_WRITTEN:  # the oldest first
            del WRITTEN[next(iter(WRITTEN))]
        return None

    dump.in_c = True  # type: ignore[attr-defined]
    _yaml._dump = dump  # type: ignore[attr-defined]
