"""The coordinator's memory across restarts: an embedded SQLite database (nothing to install) with
every guest's job, state, steps (start, end, duration, error) and bytes copied.

Each write commits at once, so a coordinator killed at any point leaves a database that says what
had finished, what was running, and which guest had a target half-written. The database carries
its schema's version (`PRAGMA user_version`); opening one of an older version migrates it in place,
step by step, each step one transaction, so a coordinator upgraded over a fleet's state keeps it."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from v2v.errors import V2VError
from v2v.v1 import coordinator_pb2
from v2v.v1 import types_pb2 as pb

# Version 1: the first schema (databases made before versions were kept are version 0 and hold it).
_TABLES = (
    """CREATE TABLE IF NOT EXISTS guests (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,               -- submission order: the queue's order after a restart
    name TEXT NOT NULL,
    job BLOB NOT NULL,                  -- v2v.v1.GuestJob
    priority INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL,             -- v2v.v1.GuestState
    step TEXT NOT NULL DEFAULT '',      -- current or last step
    worker TEXT NOT NULL DEFAULT '',
    workdir TEXT NOT NULL DEFAULT '',
    attempt INTEGER NOT NULL DEFAULT 0,
    error BLOB,                         -- v2v.v1.Error when failed
    source BLOB,                        -- v2v.v1.Source once opened
    files TEXT NOT NULL DEFAULT '[]',   -- what the output wrote (JSON list)
    bytes_copied INTEGER NOT NULL DEFAULT 0,
    target_open INTEGER NOT NULL DEFAULT 0,        -- setup done, finalize not yet: the target is partial
    target_interrupted INTEGER NOT NULL DEFAULT 0, -- a restart found the target partial
    submitted REAL NOT NULL,
    started REAL,
    ended REAL
)""",
    """CREATE TABLE IF NOT EXISTS steps (
    guest TEXT NOT NULL REFERENCES guests(id),
    attempt INTEGER NOT NULL,
    step TEXT NOT NULL,
    parent TEXT NOT NULL DEFAULT '',
    disk INTEGER NOT NULL DEFAULT -1,   -- -1: the step is not about one disk
    state TEXT NOT NULL,                -- running, succeeded, failed
    started REAL NOT NULL,
    ended REAL,
    duration REAL,
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (guest, attempt, step, parent, disk)
)""",
)


def _create_tables(db: sqlite3.Connection) -> None:
    for sql in _TABLES:
        db.execute(sql)


def _index_names(db: sqlite3.Connection) -> None:
    """Version 2: guests are looked up by name (`v2v logs web1`, Status and Logs take a name), the
    latest of a name first: without an index each lookup read every guest of the fleet."""
    db.execute("CREATE INDEX IF NOT EXISTS guests_by_name ON guests (name, seq)")


def _index_seq(db: sqlite3.Connection) -> None:
    """Version 3: next_seq's MAX(seq) at every submitted guest; without the index a scan each time,
    and a 2,000-guest Submit O(N^2)."""
    db.execute("CREATE INDEX IF NOT EXISTS guests_by_seq ON guests (seq)")


# MIGRATIONS[n] takes a database of version n to version n + 1; the last one gives SCHEMA_VERSION.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_create_tables, _index_names, _index_seq)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Brings the database to SCHEMA_VERSION (a new, empty one too); refuses one of a newer v2v,
    whose columns this one would not know."""
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise V2VError(f"the state database {path} is of schema version {version}, newer than this v2v's "
                       f"{SCHEMA_VERSION}: run the v2v that wrote it, or give another --state",
                       pb.ERROR_CODE_BAD_INPUT)
    for n in range(version, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")  # one coordinator migrates; another opening it waits, then sees it done
        try:
            if schema_version(db) == n:
                MIGRATIONS[n](db)
                db.execute(f"PRAGMA user_version = {n + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


FINAL = (coordinator_pb2.GUEST_STATE_SUCCEEDED, coordinator_pb2.GUEST_STATE_FAILED,
         coordinator_pb2.GUEST_STATE_CANCELLED)


def state_name(state: int) -> str:
    """queued, running, succeeded, failed, cancelled."""
    return coordinator_pb2.GuestState.Name(state).removeprefix("GUEST_STATE_").lower()


@dataclass
class GuestRecord:
    id: str
    seq: int
    name: str
    job: coordinator_pb2.GuestJob
    state: coordinator_pb2.GuestState
    step: str = ""
    worker: str = ""
    workdir: str = ""
    attempt: int = 0
    error: pb.Error | None = None
    source: pb.Source | None = None
    files: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    target_open: bool = False
    target_interrupted: bool = False
    submitted: float = 0.0
    started: float | None = None
    ended: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL


@dataclass
class StepRecord:
    step: str
    parent: str
    disk: int | None
    state: str
    started: float
    ended: float | None
    duration: float | None
    error: str
    attempt: int


class State:
    """Thread-safe: every guest thread writes its own steps through one connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            migrate(self._db, path)
        except BaseException:
            self._db.close()
            raise
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def next_seq(self) -> int:
        return int(self._rows("SELECT COALESCE(MAX(seq), -1) + 1 AS next FROM guests")[0]["next"])

    def add(self, rec: GuestRecord) -> None:
        self._exec("INSERT INTO guests (id, seq, name, job, priority, state, attempt, submitted) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (rec.id, rec.seq, rec.name, rec.job.SerializeToString(), rec.job.priority, rec.state, rec.attempt,
                    rec.submitted or time.time()))

    def update(self, gid: str, **values: object) -> None:
        """Sets columns of one guest: state, step, worker, workdir, attempt, bytes_copied, target_open,
        target_interrupted, started, ended, job (a GuestJob), error (an Error), source (a Source),
        files (a list)."""
        cols, args = [], []
        for col, value in values.items():
            if col in ("error", "source", "job"):
                value = value.SerializeToString() if value is not None else None  # type: ignore[attr-defined]
            elif col == "files":
                value = json.dumps(value)
            cols.append(f"{col} = ?")
            args.append(value)
        self._exec(f"UPDATE guests SET {', '.join(cols)} WHERE id = ?", (*args, gid))

    def step_started(self, gid: str, attempt: int, step: str, parent: str, disk: int | None, at: float) -> None:
        self._exec("INSERT OR REPLACE INTO steps (guest, attempt, step, parent, disk, state, started) "
                   "VALUES (?, ?, ?, ?, ?, 'running', ?)",
                   (gid, attempt, step, parent, -1 if disk is None else disk, at))

    def step_ended(self, gid: str, attempt: int, step: str, parent: str, disk: int | None, state: str, at: float,
                   duration: float, error: str = "") -> None:
        key = (gid, attempt, step, parent, -1 if disk is None else disk)
        with self._lock:
            cur = self._db.execute("UPDATE steps SET state = ?, ended = ?, duration = ?, error = ? WHERE guest = ? "
                                   "AND attempt = ? AND step = ? AND parent = ? AND disk = ?",
                                   (state, at, duration, error, *key))
            if cur.rowcount == 0:  # an end whose start came from elsewhere (a service's own sub-step)
                self._db.execute("INSERT INTO steps (guest, attempt, step, parent, disk, state, started, ended, "
                                 "duration, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 (*key, state, at - duration, at, duration, error))

    def guests(self) -> list[GuestRecord]:
        return [_record(row) for row in self._rows("SELECT * FROM guests ORDER BY seq")]

    def guest(self, ref: str) -> GuestRecord | None:
        """By id, else by name (the latest guest of that name)."""
        rows = self._rows("SELECT * FROM guests WHERE id = ?", (ref,)) or \
            self._rows("SELECT * FROM guests WHERE name = ? ORDER BY seq DESC LIMIT 1", (ref,))
        return _record(rows[0]) if rows else None

    def steps(self, gid: str) -> list[StepRecord]:
        rows = self._rows("SELECT * FROM steps WHERE guest = ? ORDER BY attempt, started", (gid,))
        return [StepRecord(step=r["step"], parent=r["parent"], disk=None if r["disk"] < 0 else r["disk"],
                           state=r["state"], started=r["started"], ended=r["ended"], duration=r["duration"],
                           error=r["error"], attempt=r["attempt"]) for r in rows]

    def completed_steps(self, gid: str, attempt: int) -> set[str]:
        rows = self._rows("SELECT step FROM steps WHERE guest = ? AND attempt = ? AND parent = '' "
                          "AND disk = -1 AND state = 'succeeded'", (gid, attempt))
        return {r["step"] for r in rows}


def _record(row: sqlite3.Row) -> GuestRecord:
    job = coordinator_pb2.GuestJob()
    job.ParseFromString(row["job"])
    error = source = None
    if row["error"]:
        error = pb.Error()
        error.ParseFromString(row["error"])
    if row["source"]:
        source = pb.Source()
        source.ParseFromString(row["source"])
    return GuestRecord(id=row["id"], seq=row["seq"], name=row["name"], job=job, state=row["state"], step=row["step"],
                       worker=row["worker"], workdir=row["workdir"], attempt=row["attempt"], error=error,
                       source=source, files=json.loads(row["files"]), bytes_copied=row["bytes_copied"],
                       target_open=bool(row["target_open"]), target_interrupted=bool(row["target_interrupted"]),
                       submitted=row["submitted"], started=row["started"], ended=row["ended"])
