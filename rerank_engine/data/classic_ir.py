"""Classic IR test collections with human relevance judgements (SMART format): Cranfield, CISI, MED.

Out-of-domain checks only. The files are not ours to ship: they are read from a folder given by the
caller, by `RERANK_ENGINE_CLASSIC_IR`, or from `../shared/data/classic_ir` beside this checkout.

    col = load_collection("med", classic_ir_dir())
    col.docs["13"], col.queries["1"], col.qrels["1"]      # text, text, {doc id: grade}

Records are `.I <id>` followed by fields (`.T` title, `.A` author, `.B` source, `.W` text, `.X` links).
Documents read as "title. text"; queries as their `.W` text. Judgements are `qid docid grade ...` lines.
Relevance is binary here: every judged pair counts as relevant, except Cranfield's code −1 (its graded
codes 1–4 run from "complete answer" to "minimum interest"; no code 5, "no interest", is listed). Cranfield
query ids in `cranqrel` number the queries in file order (1..225), not by their `.I` ids, so Cranfield
queries are keyed by that order. Only queries with at least one relevant document are kept.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rerank_engine.errors import ConfigError

ENV = "RERANK_ENGINE_CLASSIC_IR"
_FIELD = re.compile(r"^\.([A-Z])\b ?(.*)$")
_WS = re.compile(r"\s+")

# name -> (documents, queries, judgements, queries keyed by file order)
FILES = {
    "cranfield": ("cran.all.1400", "cran.qry", "cranqrel", True),
    "cisi": ("CISI.ALL", "CISI.QRY", "CISI.REL", False),
    "med": ("MED.ALL", "MED.QRY", "MED.REL", False),
}


@dataclass(frozen=True)
class Collection:
    name: str
    docs: dict[str, str]  # doc id -> text
    queries: dict[str, str]  # query id -> text (judged queries only)
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: grade}

    def relevant(self, qid: str) -> set[str]:
        return set(self.qrels.get(qid, {}))


def classic_ir_dir(path: str | Path | None = None) -> Path:
    """The folder holding the collections (it may not exist: callers skip then)."""
    if path:
        return Path(path)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "classic_ir"


def available(root: str | Path | None = None) -> list[str]:
    """Names of the collections whose three files are present."""
    root = classic_ir_dir(root)
    return [name for name, files in FILES.items() if all((root / f).is_file() for f in files[:3])]


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def read_records(path: str | Path) -> list[tuple[str, dict[str, str]]]:
    """[(id, {field letter: text})] in file order."""
    records: list[tuple[str, dict[str, list[str]]]] = []
    current: list[str] | None = None
    for line in Path(path).read_text(encoding="latin-1").splitlines():
        m = _FIELD.match(line)
        if m and m.group(1) == "I":
            records.append((m.group(2).strip(), {}))
            current = None
        elif m and records:
            current = records[-1][1].setdefault(m.group(1), [])
            if m.group(2):
                current.append(m.group(2))
        elif current is not None:
            current.append(line)
    return [(rid, {k: _clean(" ".join(v)) for k, v in fields.items()}) for rid, fields in records]


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """{query id: {doc id: grade}} from `qid docid grade [...]` lines; grade −1 (Cranfield) is dropped."""
    qrels: dict[str, dict[str, int]] = {}
    for line in Path(path).read_text(encoding="latin-1").splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        grade = int(float(parts[2])) if len(parts) > 2 else 1
        if grade < 0:
            continue
        qrels.setdefault(str(int(parts[0])), {})[str(int(parts[1]))] = grade
    return qrels


def _doc_text(fields: dict[str, str]) -> str:
    title, text = fields.get("T", ""), fields.get("W", "")
    if title and text and not text.startswith(title):
        return f"{title}. {text}"
    return text or title


def load_collection(name: str, root: str | Path | None = None) -> Collection:
    if name not in FILES:
        raise ConfigError(f"unknown collection {name!r}; expected one of {sorted(FILES)}")
    root = classic_ir_dir(root)
    doc_file, query_file, qrel_file, by_order = FILES[name]
    missing = [f for f in (doc_file, query_file, qrel_file) if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: {missing} not found under {root}")
    docs = {str(int(rid)): _doc_text(f) for rid, f in read_records(root / doc_file)}
    raw_queries = read_records(root / query_file)
    queries = {
        str(i if by_order else int(rid)): f.get("W") or f.get("T", "")
        for i, (rid, f) in enumerate(raw_queries, start=1)
    }
    qrels = {
        q: {d: g for d, g in rel.items() if d in docs} for q, rel in read_qrels(root / qrel_file).items()
    }
    qrels = {q: rel for q, rel in qrels.items() if rel and q in queries}
    return Collection(name=name, docs=docs, queries={q: queries[q] for q in qrels}, qrels=qrels)
