"""Small file helpers shared by the records the project writes. Light module."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: str | Path, data, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write `data` as JSON atomically: to a temporary file beside `path`, then renamed over it, so a
    reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")
    tmp.replace(path)
    return path


def read_json_record(path: str | Path, required: tuple[str, ...], what: str) -> dict:
    """A JSON object holding at least the `required` keys; ValueError naming the file and what is missing."""
    data = json.loads(Path(path).read_text())
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path} is not a {what}: missing {missing}")
    return data
