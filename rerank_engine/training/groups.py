"""Training groups (a query, its positive first, then its negatives) drawn from mined records in an order
fixed by (seed, epoch), with a cursor, so a resumed run draws exactly the groups it would have drawn.
Light module: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class GroupSampler:
    """Deterministic, resumable: epoch permutations from (seed, epoch); a cursor into the current one."""

    def __init__(self, records: list[dict], n_negatives: int, seed: int, n_random: int = 0):
        self.records, self.n_negatives, self.seed, self.n_random = records, n_negatives, seed, n_random
        self.epoch, self.cursor = 0, 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])

    def next_groups(self, n: int) -> list[Group]:
        groups = []
        while len(groups) < n:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.records))
            if self.cursor >= len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
                continue
            idx = int(order[self.cursor])
            rng = np.random.default_rng((self.seed, self.epoch, self.cursor))
            self.cursor += 1
            rec = self.records[idx]
            p = int(rng.integers(len(rec["pos"])))
            texts, ids = [rec["pos"][p]], [_doc_id(rec, "pos", p)]
            negs = list(rec["neg"])
            for i in rng.choice(len(negs), size=self.n_negatives, replace=len(negs) < self.n_negatives):
                texts.append(negs[i])
                ids.append(_doc_id(rec, "neg", int(i)))
            while len(texts) < 1 + self.n_negatives + self.n_random:  # easy: another query's positive
                other = self.records[int(rng.integers(len(self.records)))]
                if other is not rec and other["pos"][0] not in rec["pos"]:
                    texts.append(other["pos"][0])
                    ids.append(_doc_id(other, "pos", 0))
            groups.append(Group(rec["query"], rec.get("qid"), texts, ids))
        return groups


@dataclass(frozen=True)
class Group:
    """One training group: the query and its passages, the positive first."""

    query: str
    qid: str | None
    passages: list[str]
    doc_ids: list[str | None]


def _doc_id(record: dict, side: str, i: int) -> str | None:
    ids = record.get(f"{side}_ids")
    return ids[i] if ids else None
