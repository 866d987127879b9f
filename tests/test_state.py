"""The state database: what a restarted coordinator reads back is what the last one wrote, even
when it was killed right after a write (every write commits)."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

from v2v.coordinator.state import GuestRecord, State
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
