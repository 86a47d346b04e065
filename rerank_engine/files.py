"""Small file helpers: the records the project writes, the input files it reads, and the rule that an
output never touches an input. Light module."""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def write_json(path: str | Path, data, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write `data` as JSON atomically: to a temporary file beside `path`, then renamed over it, so a
    reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")
    tmp.replace(path)
    return path


def read_json_record(path: str | Path, required: tuple[str, ...], what: str) -> dict:
    """A JSON object holding at least the `required` keys; InputError naming the file and what is missing."""
    from rerank_engine.errors import InputError

    data = json.loads(Path(path).read_text())
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{path} is not a {what}: missing {missing}")
    return data


# -- reading a folder -----------------------------------------------------------------------------------

# What engines leave beside their data (Spark's _SUCCESS, .crc files, _temporary/ attempts, Hive's
# _tmp folders, the nightly job's _nightly/): a name or folder below the given folder starting with one of
# these is not data. pyarrow's dataset discovery skips the same (`ignore_prefixes`).
HIDDEN_PREFIXES = ("_", ".")


def _hidden(relative: str) -> bool:
    return any(part.startswith(HIDDEN_PREFIXES) for part in Path(relative).parts)


def resolve_files(path: str) -> tuple[list[str], object]:
    """The Parquet files of an input: a file, a folder (its *.parquet files, recursively, skipping names
    and folders that start with "_" or "."), or a glob (the same skipped below its fixed folder); local or
    a pyarrow URI. Returns (files, pyarrow filesystem or None for local paths)."""
    from pyarrow import fs

    from rerank_engine.errors import InputError

    if "://" in path:
        filesystem, root = fs.FileSystem.from_uri(path)
        info = filesystem.get_file_info(root)
        if info.type == fs.FileType.File:
            return [root], filesystem
        if info.type == fs.FileType.Directory:
            found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
            parquet = [f.path for f in found if f.is_file and f.path.endswith(".parquet")]
            files = _visible(parquet, path, lambda f: f[len(root) :].lstrip("/"))
            if files:
                return files, filesystem
        raise InputError(f"input {path} matches no Parquet file")
    p = Path(path)
    if p.is_file():
        files = [str(p)]
    elif p.is_dir():
        files = _visible([str(f) for f in p.rglob("*.parquet")], path, lambda f: os.path.relpath(f, p))
    else:
        matched = [f for f in glob.glob(path, recursive=True) if Path(f).is_file()]
        root = _glob_root(path)
        files = _visible(matched, path, lambda f: os.path.relpath(f, root))
    if not files:
        raise InputError(f"input {path} matches no Parquet file (expected a file, a folder or a glob)")
    return files, None


def _visible(files: list[str], given: str, relative) -> list[str]:
    """`files` less those whose path below the input (`relative(file)`) has a hidden name or folder,
    sorted; logs how many it skipped."""
    kept = sorted(f for f in files if not _hidden(relative(f)))
    if len(kept) < len(files):
        skipped = len(files) - len(kept)
        log.info(
            "%s: %d Parquet files read, %d skipped (names or folders starting with _ or .)",
            given,
            len(kept),
            skipped,
        )
    return kept


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
