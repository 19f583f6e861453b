"""The reviewers' decisions: an append-only log in SQLite inside the run's output folder.

Every decision (accept, relabel, count, empty, split, merge, clock shift,
undo) is one row: who, when, what, and the photo ids (content hashes) it is
about. Nothing is ever updated or deleted; an undo is a decision that names
the one it undoes. The current state is derived by replaying the log
(:mod:`kadr.traps.review`), so a rerun of ``traps run`` that changes the
registrations cannot lose a decision: it is tied to photos, not to rows.

The database runs in WAL mode with ``synchronous=FULL``: :meth:`DecisionLog.append`
returns only after the decision is on disk, so a server killed with ``kill -9``
loses nothing it acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kadr.core.errors import UserError

DB_NAME = "decisions.sqlite"
SCHEMA_VERSION = 1
KINDS = ("label", "empty", "split", "merge", "clock", "undo")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,          -- UTC, ISO 8601
    reviewer TEXT NOT NULL,
    kind TEXT NOT NULL,
    photos TEXT NOT NULL,      -- JSON list of photo ids (content hashes)
    payload TEXT NOT NULL      -- JSON: what was decided
);
CREATE TRIGGER IF NOT EXISTS decisions_append_only_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'the decision log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_append_only_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'the decision log is append-only'); END;
"""


class DecisionLogError(UserError):
    """The decision database cannot be used (corrupt, from a newer kadr, not writable)."""


@dataclass(frozen=True)
class Decision:
    id: int
    at: str
    reviewer: str
    kind: str
    photos: tuple[str, ...]
    payload: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NewDecision:
    """A decision before it is stored (the log gives it its id and time)."""

    kind: str
    photos: tuple[str, ...]
    payload: dict = field(default_factory=dict)


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class DecisionLog:
    """The decision database of one output folder. Opening never deletes or rewrites it."""

    def __init__(self, out_dir: str | Path, create: bool = True):
        self.path = Path(out_dir) / DB_NAME
        if not create and not self.path.exists():
            raise DecisionLogError(f"{self.path}: no decisions yet")
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=5000")
            check = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self.db.executescript(_SCHEMA)
            version = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if version is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(version[0]) > SCHEMA_VERSION:
                raise DecisionLogError(
                    f"{self.path} was written by a newer kadr (schema {version[0]}); upgrade "
                    "kadr to review this run. The file is left as it is.")
        except sqlite3.DatabaseError as e:
            raise DecisionLogError(
                f"{self.path} cannot be read as a decision database ({e}). It is left as it "
                "is; move it aside to start a new log, or restore it from a backup.") from e

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, reviewer: str, decisions: Iterable[NewDecision]) -> list[Decision]:
        """Store decisions in one transaction; returns them once they are on disk."""
        at = now_utc()
        stored = []
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for d in decisions:
                if d.kind not in KINDS:
                    raise ValueError(f"unknown decision kind {d.kind!r}")
                cur = self.db.execute(
                    "INSERT INTO decisions (at, reviewer, kind, photos, payload) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (at, reviewer, d.kind, json.dumps(list(d.photos)),
                     json.dumps(d.payload, sort_keys=True)))
                stored.append(Decision(cur.lastrowid, at, reviewer, d.kind, tuple(d.photos),
                                       dict(d.payload)))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return stored

    def all(self) -> list[Decision]:
        return self.since(0)

    def since(self, after: int) -> list[Decision]:
        """Decisions stored after id ``after`` (by another server or process), in order."""
        rows = self.db.execute("SELECT id, at, reviewer, kind, photos, payload FROM decisions "
                               "WHERE id > ? ORDER BY id", (after,))
        return [Decision(i, at, who, kind, tuple(json.loads(p)), json.loads(pl))
                for i, at, who, kind, p, pl in rows]

    def last_id(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()[0]


def read_decisions(out_dir: str | Path) -> list[Decision]:
    """The log of an output folder; [] when nobody has reviewed it."""
    if not (Path(out_dir) / DB_NAME).exists():
        return []
    with DecisionLog(out_dir, create=False) as log:
        return log.all()


def last_decision_id(out_dir: str | Path) -> int:
    """The id of the newest decision of an output folder; 0 when nobody has reviewed it."""
    if not (Path(out_dir) / DB_NAME).exists():
        return 0
    with DecisionLog(out_dir, create=False) as log:
        return log.last_id()

