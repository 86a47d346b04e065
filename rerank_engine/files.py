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


# -- inputs are never written ---------------------------------------------------------------------------


def local_path(path: str | Path) -> Path | None:
    """`path` made absolute with links resolved; a `file://` URI counts as local, any other URI
    (s3://, gs://, ...) is None: it cannot overlap a local output."""
    text = str(path)
    if "://" in text:
        if not text.startswith("file://"):
            return None
        text = text[len("file://") :]
    return Path(text).expanduser().resolve()


def _glob_root(pattern: str) -> Path:
    """The folder a glob searches under: its path up to the first component with a wildcard."""
    fixed: list[str] = []
    for part in Path(pattern).parts:
        if _is_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def check_output_apart(outputs: dict[str, str | Path], inputs: dict[str, str | Path | None]) -> None:
    """Refuse, before anything is written, moved or deleted, an output that equals, contains or lies
    inside an input. `outputs` and `inputs` map a role ("output", "query log", "corpus", "index", ...)
    to a path; inputs that are None are left out. A glob input counts as the folder it searches under.

    Inside an input, an output is read back as input by the next run over that folder; containing one,
    `--overwrite` would delete it. Raises ConfigError naming both roles and paths."""
    from rerank_engine.errors import ConfigError

    for out_role, out in outputs.items():
        out_path = local_path(out)
        if out_path is None:
            continue
        for in_role, given in inputs.items():
            if given is None:
                continue
            text = str(given)
            in_path = local_path(_glob_root(text) if _is_glob(text) else text)
            if in_path is None:
                continue
            if out_path == in_path:
                how = "is"
            elif in_path.is_relative_to(out_path):
                how = "contains"
            elif out_path.is_relative_to(in_path):
                how = "lies inside"
            else:
                continue
            raise ConfigError(
                f"{out_role} {out} {how} the {in_role} {given}: inputs are never written, moved or deleted "
                f"(not with --overwrite either); choose an {out_role} folder outside every input"
            )
