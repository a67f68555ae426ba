"""`transferline run --modality text|image`: write the choice into params.yaml.

The modality lives in params.yaml like every value, so DVC sees the switch
(every stage lists `modality` among its params and reruns) and later runs,
`dvc repro` included, keep it. Only the `modality:` line changes; comments
and the rest of the file stay as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

LINE = re.compile(r"^modality:[^\n#]*(#.*)?$", re.MULTILINE)


def set_modality(path: str | Path, modality: str) -> bool:
    """Set the top-level `modality:` of a params file; True if the file changed."""
    path = Path(path)
    text = path.read_text()
    match = LINE.search(text)
    if match:
        comment = f"  {match.group(1)}" if match.group(1) else ""
        new = text[: match.start()] + f"modality: {modality}{comment}" + text[match.end() :]
    else:
        new = f"modality: {modality}\n" + text
    if new != text:
        path.write_text(new)
    return new != text
