"""The state database: what a restarted coordinator reads back is what the last one wrote, even
when it was killed right after a write (every write commits)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from v2v.coordinator.state import SCHEMA_VERSION, GuestRecord, State
from v2v.errors import V2VError
from v2v.v1 import coordinator_pb2, input_pb2
from v2v.v1 import types_pb2 as pb

GS = coordinator_pb2


def job(name: str, priority: int = 0) -> coordinator_pb2.GuestJob:
    return GS.GuestJob(name=name, priority=priority,
                       input=input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[f"/img/{name}.img"])))


def add(state: State, gid: str, name: str) -> GuestRecord:
    rec = GuestRecord(id=gid, seq=state.next_seq(), name=name, job=job(name, 3), state=GS.GUEST_STATE_QUEUED,
                      submitted=100.0)
    state.add(rec)
    return rec


def test_guests_round_trip(tmp_path):
    st = State(tmp_path / "s.db")
    add(st, "a1", "alpha")
    add(st, "b2", "beta")
    st.update("a1", state=GS.GUEST_STATE_FAILED, step="convert", attempt=2, bytes_copied=1234, worker="w1",
              error=pb.Error(step="convert", code=pb.ERROR_CODE_CONVERSION_FAILED, message="no OS"),
              source=pb.Source(name="alpha", memory=1 << 30), files=["/out/alpha-sda"], target_interrupted=True,
              started=101.0, ended=150.0)
    st.close()
    st = State(tmp_path / "s.db")
    a, b = st.guests()
    assert (a.id, a.seq, b.id, b.seq) == ("a1", 0, "b2", 1)
    assert a.job == job("alpha", 3) and a.job.priority == 3
    assert (a.state, a.step, a.attempt, a.bytes_copied, a.worker) == (GS.GUEST_STATE_FAILED, "convert", 2, 1234, "w1")
    assert a.error.message == "no OS" and a.error.code == pb.ERROR_CODE_CONVERSION_FAILED
    assert a.source.memory == 1 << 30 and a.files == ["/out/alpha-sda"]
    assert a.target_interrupted and a.finished and not b.finished
    assert (a.started, a.ended) == (101.0, 150.0)
    assert st.guest("beta").id == "b2" and st.guest("a1").name == "alpha" and st.guest("nope") is None
    st.update("a1", error=None)
    assert st.guest("a1").error is None


def test_steps_and_completed_steps(tmp_path):
    st = State(tmp_path / "s.db")
    add(st, "g", "gamma")
    st.step_started("g", 1, "open", "", None, 10.0)
    st.step_ended("g", 1, "open", "", None, "succeeded", 11.5, 1.5)
    st.step_started("g", 1, "convert", "", None, 12.0)
    st.step_ended("g", 1, "inspect", "convert", None, "succeeded", 20.0, 8.0)  # no start seen: inserted
    st.step_started("g", 1, "copy", "copy", 0, 30.0)
    st.step_ended("g", 1, "copy", "copy", 0, "failed", 31.0, 1.0, "No space left on device")
    steps = st.steps("g")
    assert [(s.step, s.parent, s.disk, s.state) for s in steps] == [
        ("open", "", None, "succeeded"), ("convert", "", None, "running"), ("inspect", "convert", None, "succeeded"),
        ("copy", "copy", 0, "failed")]
    assert steps[0].duration == 1.5 and steps[2].started == 12.0 and steps[3].error == "No space left on device"
    assert st.completed_steps("g", 1) == {"open"}
    assert st.completed_steps("g", 2) == set()


def _write_then_die(path: str) -> None:
    st = State(Path(path))
    add(st, "k", "killed")
    st.update("k", state=GS.GUEST_STATE_RUNNING, step="copy", target_open=True)
    st.step_started("k", 1, "copy", "", None, 5.0)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_writer_leaves_every_committed_write(tmp_path):
    proc = multiprocessing.get_context("spawn").Process(target=_write_then_die, args=(str(tmp_path / "s.db"),))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    g = State(tmp_path / "s.db").guest("k")
    assert (g.state, g.step, g.target_open) == (GS.GUEST_STATE_RUNNING, "copy", True)


# The schema of the databases made before the schema had a version (user_version 0), as they are.
_UNVERSIONED = """
CREATE TABLE guests (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, name TEXT NOT NULL, job BLOB NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0, state INTEGER NOT NULL, step TEXT NOT NULL DEFAULT '',
    worker TEXT NOT NULL DEFAULT '', workdir TEXT NOT NULL DEFAULT '', attempt INTEGER NOT NULL DEFAULT 0,
    error BLOB, source BLOB, files TEXT NOT NULL DEFAULT '[]', bytes_copied INTEGER NOT NULL DEFAULT 0,
    target_open INTEGER NOT NULL DEFAULT 0, target_interrupted INTEGER NOT NULL DEFAULT 0,
    submitted REAL NOT NULL, started REAL, ended REAL);
CREATE TABLE steps (guest TEXT NOT NULL REFERENCES guests(id), attempt INTEGER NOT NULL, step TEXT NOT NULL,
    parent TEXT NOT NULL DEFAULT '', disk INTEGER NOT NULL DEFAULT -1, state TEXT NOT NULL, started REAL NOT NULL,
    ended REAL, duration REAL, error TEXT NOT NULL DEFAULT '', PRIMARY KEY (guest, attempt, step, parent, disk));
"""


def test_an_unversioned_database_migrates_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(_UNVERSIONED)
    error = pb.Error(step="copy", code=pb.ERROR_CODE_NO_SPACE, message="No space left on device")
    for seq, (gid, state) in enumerate((("o1", GS.GUEST_STATE_SUCCEEDED), ("o2", GS.GUEST_STATE_FAILED))):
        db.execute("INSERT INTO guests (id, seq, name, job, state, attempt, files, bytes_copied, error, submitted, "
                   "ended) VALUES (?, ?, 'web1', ?, ?, 1, '[\"/out/web1-sda\"]', 4096, ?, 10.0, 20.0)",
                   (gid, seq, job("web1").SerializeToString(), state,
                    error.SerializeToString() if state == GS.GUEST_STATE_FAILED else None))
    db.execute("INSERT INTO steps (guest, attempt, step, state, started, ended, duration) "
               "VALUES ('o1', 1, 'open', 'succeeded', 11.0, 12.5, 1.5)")
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()

    st = State(path)
    st.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    for index in ("guests_by_name", "guests_by_seq"):
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name = ?", (index,)).fetchone()
    db.close()
    st = State(path)  # a migrated database opens as it is
    first, second = st.guests()
    assert (first.id, first.state, first.files, first.bytes_copied) == ("o1", GS.GUEST_STATE_SUCCEEDED,
                                                                        ["/out/web1-sda"], 4096)
    assert first.job == job("web1") and first.error is None and (first.submitted, first.ended) == (10.0, 20.0)
    assert second.error == error
    assert st.guest("web1").id == "o2"  # by name: the latest of that name
    [step] = st.steps("o1")
    assert (step.step, step.state, step.disk, step.duration) == ("open", "succeeded", None, 1.5)
    add(st, "n3", "new")  # and takes new rows after them
    assert [g.seq for g in st.guests()] == [0, 1, 2]


def test_a_database_of_a_newer_v2v_is_refused(tmp_path):
    path = tmp_path / "new.db"
    State(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(V2VError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this v2v's"):
        State(path)
