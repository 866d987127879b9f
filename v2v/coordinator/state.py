"""The coordinator's memory across restarts: an embedded SQLite database (nothing to install) with
every guest's job, state, steps (start, end, duration, error) and bytes copied.

Each write commits at once, so a coordinator killed at any point leaves a database that says what
had finished, what was running, and which guest had a target half-written."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from v2v.v1 import coordinator_pb2
from v2v.v1 import types_pb2 as pb

_SCHEMA = """
CREATE TABLE IF NOT EXISTS guests (
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
);
CREATE TABLE IF NOT EXISTS steps (
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
);
-- next_seq's MAX(seq) at every Submitted guest: without it a scan, and a 2,000-guest Submit O(N^2)
CREATE INDEX IF NOT EXISTS guests_by_seq ON guests (seq);
"""

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
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def next_seq(self) -> int:
        row = self._exec("SELECT COALESCE(MAX(seq), -1) + 1 FROM guests").fetchone()
        return int(row[0])

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
        with self._lock:
            rows = self._db.execute("SELECT id, seq, name, job, state, step, worker, workdir, attempt, error, source, "
                                    "files, bytes_copied, target_open, target_interrupted, submitted, started, "
                                    "ended FROM guests ORDER BY seq").fetchall()
        return [_record(row) for row in rows]

    def guest(self, ref: str) -> GuestRecord | None:
        """By id, else by name (the latest guest of that name)."""
        found = [g for g in self.guests() if g.id == ref] or [g for g in self.guests() if g.name == ref]
        return found[-1] if found else None

    def steps(self, gid: str) -> list[StepRecord]:
        with self._lock:
            rows = self._db.execute("SELECT step, parent, disk, state, started, ended, duration, error, attempt "
                                    "FROM steps WHERE guest = ? ORDER BY attempt, started", (gid,)).fetchall()
        return [StepRecord(r[0], r[1], None if r[2] < 0 else r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows]

    def completed_steps(self, gid: str, attempt: int) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT step FROM steps WHERE guest = ? AND attempt = ? AND parent = '' "
                                    "AND disk = -1 AND state = 'succeeded'", (gid, attempt)).fetchall()
        return {r[0] for r in rows}


def _record(row: tuple[Any, ...]) -> GuestRecord:
    job = coordinator_pb2.GuestJob()
    job.ParseFromString(row[3])
    error = source = None
    if row[9]:
        error = pb.Error()
        error.ParseFromString(row[9])
    if row[10]:
        source = pb.Source()
        source.ParseFromString(row[10])
    return GuestRecord(id=row[0], seq=row[1], name=row[2], job=job, state=row[4], step=row[5], worker=row[6],
                       workdir=row[7], attempt=row[8], error=error, source=source, files=json.loads(row[11]),
                       bytes_copied=row[12], target_open=bool(row[13]), target_interrupted=bool(row[14]),
                       submitted=row[15], started=row[16], ended=row[17])
