"""The coordinator's fleet RPCs, restart and metrics with the real services and no appliance: the
guests only open their phony disks (print_source) or fail in check, which is enough to drive the
queue, Follow, Cancel, Retry, the state and the metrics. ~10 s idle (3 min at load ~25)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import V2V
from tests.test_fleet import free_port
from v2v.client import FleetClient
from v2v.coordinator.scheduler import Limits
from v2v.coordinator.servers import EmbeddedServices
from v2v.coordinator.service import EventLog
from v2v.coordinator.state import GuestRecord, State
from v2v.v1 import coordinator_pb2, input_pb2, output_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

GS = coordinator_pb2


def source_only(name: str, disk: Path) -> coordinator_pb2.GuestJob:
    return GS.GuestJob(name=name, print_source=True,
                       input=input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[str(disk)])))


def failing_check(name: str, disk: Path, missing: Path) -> coordinator_pb2.GuestJob:
    return GS.GuestJob(name=name, input=input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[str(disk)])),
                       output=output_pb2.OutputSpec(local=output_pb2.LocalOutput(directory=str(missing))))


def test_queue_follow_cancel_retry(phony, workroot, tmp_path):
    disk = phony / "debian-single.img"
    port = free_port()
    with EmbeddedServices(workroot, limits=Limits(per_source_host=1), state=tmp_path / "s.db",
                          metrics=f"127.0.0.1:{port}") as address, FleetClient(address) as fleet:
        ids = fleet.submit([source_only("a", disk), source_only("b", disk),
                            failing_check("c", disk, tmp_path / "missing"), source_only("d", disk)])
        final = {s.name: s for s in fleet.wait(ids)}
        assert {n: s.state for n, s in final.items()} == {
            "a": GS.GUEST_STATE_SUCCEEDED, "b": GS.GUEST_STATE_SUCCEEDED, "c": GS.GUEST_STATE_FAILED,
            "d": GS.GUEST_STATE_SUCCEEDED}
        assert final["a"].source.disks[0].virtual_size == disk.stat().st_size
        c = final["c"]
        assert c.error.step == "check" and "missing" in c.error.message and c.attempt == 1

        # the whole log: each guest's statuses and events, in order, naming the guest
        events = list(fleet.follow())
        assert {fe.id for fe in events} == set(ids)
        assert [fe.status.state for fe in events if fe.id == ids[0] and fe.HasField("status")] == [
            GS.GUEST_STATE_QUEUED, GS.GUEST_STATE_RUNNING, GS.GUEST_STATE_SUCCEEDED]
        watched = [ev.step.step for ev in fleet.stub.Watch(GS.GuestRef(id=ids[1])) if ev.HasField("step")]
        assert watched[0] == "open"

        with pytest.raises(Exception, match="no kept conversion"):
            fleet.retry(c.id, "setup")
        with pytest.raises(Exception, match="only a failed or cancelled guest"):
            fleet.retry(ids[0])
        retried = fleet.retry(c.id, "open")  # fails again in check, before any conversion
        assert retried.attempt == 2
        again = next(fleet.wait([c.id]))
        assert again.state == GS.GUEST_STATE_FAILED and again.attempt == 2

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'v2v_guests{state="succeeded"} 3.0' in metrics
        assert 'v2v_guests{state="failed"} 1.0' in metrics
        assert 'v2v_failures_total{cause="bad_input",step="check"} 2.0' in metrics
        assert 'v2v_step_duration_seconds_count{outcome="succeeded",step="open"} 5.0' in metrics


def test_follow_resumes_after_a_sequence_number(phony, workroot, tmp_path):
    """Follow is the one stream: one guest or all, and a client that lost it asks again after the
    last sequence number it saw and gets exactly the rest, for all guests or for one."""
    disk = phony / "debian-single.img"
    with EmbeddedServices(workroot, state=tmp_path / "s.db") as address, FleetClient(address) as fleet:
        ids = fleet.submit([source_only("a", disk), source_only("b", disk)])
        list(fleet.wait(ids))
        everything = list(fleet.follow())
        seqs = [fe.seq for fe in everything]
        assert seqs == sorted(set(seqs)) and len(seqs) > 6  # increasing, one number an event
        cut = seqs[len(seqs) // 2]
        assert list(fleet.follow(after_seq=cut)) == [fe for fe in everything if fe.seq > cut]
        assert list(fleet.follow(ids[1], after_seq=cut)) == [fe for fe in everything
                                                             if fe.seq > cut and fe.id == ids[1]]
        assert list(fleet.follow(after_seq=seqs[-1])) == []  # nothing missed
        # numbers start at the coordinator's start time (µs): one from before a restart (small) or
        # from nowhere (past the newest) gets the whole log, not a silent gap
        assert seqs[0] > 1_600_000_000 * 10**6
        assert list(fleet.follow(after_seq=1)) == everything
        assert list(fleet.follow(after_seq=seqs[-1] + 10**9)) == everything
        # the old form still answers, from the same log
        watched = list(fleet.stub.Watch(GS.GuestRef(id=ids[0])))
        assert watched == [fe.event for fe in everything if fe.id == ids[0] and fe.HasField("event")]


def test_a_queued_guest_is_cancelled(phony, workroot, tmp_path):
    disk = phony / "debian-single.img"
    services = EmbeddedServices(workroot, limits=Limits(per_source_host=1), state=tmp_path / "s.db")
    with services as address, FleetClient(address) as fleet:
        scheduler = services.coordinator.scheduler
        holder = scheduler.ticket("test", 100, "localhost")
        with scheduler.admitted(holder):  # the only slot of the source host: every guest queues
            ids = fleet.submit([source_only("a", disk), source_only("b", disk)])
            time.sleep(0.3)
            assert [fleet.status(i).state for i in ids] == [GS.GUEST_STATE_QUEUED] * 2
            fleet.cancel(ids[1])
            ended = threading.Event()
            threading.Thread(target=lambda: (list(fleet.wait([ids[1]])), ended.set()), daemon=True).start()
            assert ended.wait(10)
        final = {s.name: s.state for s in fleet.wait(ids)}
    assert final == {"a": GS.GUEST_STATE_SUCCEEDED, "b": GS.GUEST_STATE_CANCELLED}


def test_restart_takes_up_the_state(phony, workroot, tmp_path):
    """The state a killed coordinator left: `done` finished; `converting` was converting (its work
    directory, whose overlays died with the services, is still there); `writing` had its target
    half-written (its disk file exists) when it died."""
    disk = phony / "debian-single.img"
    out = tmp_path / "out"
    out.mkdir()
    state = State(tmp_path / "s.db")
    records = {}
    for n, name in enumerate(("done", "converting", "writing")):
        rec = GuestRecord(id=f"id-{name}", seq=n, name=name, job=source_only(name, disk), state=GS.GUEST_STATE_RUNNING,
                          submitted=time.time(), attempt=1)
        state.add(rec)
        records[name] = rec
    state.update("id-done", state=GS.GUEST_STATE_SUCCEEDED, step="finalize")
    old_wd = WorkDir("converting.old", workroot).ensure().path
    state.update("id-converting", step="convert", workdir=old_wd.name)
    for step in ("open", "check"):
        state.step_started("id-converting", 1, step, "", None, 1.0)
        state.step_ended("id-converting", 1, step, "", None, "succeeded", 2.0, 1.0)
    half = out / "writing-sda"
    half.write_bytes(b"\0" * 4096)
    wd = WorkDir("writing.old", workroot).ensure().path
    (wd / "target.json").write_text(json.dumps({"name": "writing", "disks": [{"index": 0, "path": str(half)}]}))
    state.update("id-writing", step="copy", workdir=wd.name, target_open=True)
    state.close()

    with EmbeddedServices(workroot, state=tmp_path / "s.db") as address, FleetClient(address) as fleet:
        final = {s.name: s for s in fleet.wait([f"id-{n}" for n in records])}
        notes = [fe.event.step.message for fe in fleet.follow("id-writing") if fe.HasField("event")
                 and fe.event.step.step == "resume"]
    assert final["done"].attempt == 1 and final["done"].state == GS.GUEST_STATE_SUCCEEDED
    assert (final["converting"].state, final["converting"].attempt) == (GS.GUEST_STATE_SUCCEEDED, 2)
    assert not old_wd.exists()  # its overlays were gone: run again from open, in a new work directory
    w = final["writing"]
    assert w.state == GS.GUEST_STATE_SUCCEEDED and w.attempt == 2 and w.target_interrupted
    assert any(f"replacing {half}" in m for m in notes), notes
    st = State(tmp_path / "s.db")
    assert st.guest("writing").job.output.overwrite  # the next write replaces the half-written disk
    assert [s.step for s in st.steps("id-converting") if s.attempt == 2] == ["open"]


def test_fleet_command_embedded(phony, workroot, tmp_path):
    """`v2v fleet` runs a plan in-process, `v2v status` reads its state, a second run resumes."""
    plan = tmp_path / "plan.yaml"
    disk = str(phony / "debian-single.img")
    plan.write_text(yaml.safe_dump({
        "limits": {"conversions": 1},
        "defaults": {"output": {"type": "local", "storage": str(tmp_path / "missing")}},
        "guests": [{"name": "x", "input": {"files": [disk]}}, {"name": "y", "input": {"files": [disk]}}]}))
    env = dict(os.environ, V2V_WORKDIR_ROOT=str(workroot))
    state = tmp_path / "s.db"
    r = subprocess.run([V2V, "fleet", str(plan), "--state", str(state), "--machine-readable"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 1
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    ends = [ln["status"] for ln in lines if "status" in ln and ln["status"]["state"] == "GUEST_STATE_FAILED"]
    assert sorted(s["name"] for s in ends) == ["x", "y"] and {s["error"]["step"] for s in ends} == {"check"}
    assert "v2v fleet: x: failed in step check" in r.stderr
    human = subprocess.run([V2V, "status", "--state", str(state)], capture_output=True, text=True, env=env,
                           check=True)
    assert "x" in human.stdout and "failed" in human.stdout
    again = subprocess.run([V2V, "fleet", str(plan), "--state", str(state)], capture_output=True, text=True,
                           env=env, timeout=120)
    assert again.returncode == 1 and "2 guest(s) of the plan already known" in again.stderr
    assert len(State(state).guests()) == 2  # not submitted twice


def test_example_client_against_a_served_coordinator(phony, workroot, tmp_path):
    """docs/examples/fleet-client.py drives `v2v serve coordinator --embedded 1`."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "defaults": {"output": {"type": "local", "storage": str(tmp_path / "missing")}},
        "guests": [{"name": "z", "input": {"files": [str(phony / "debian-single.img")]}}]}))
    sock = tmp_path / "coord.sock"
    env = dict(os.environ, V2V_WORKDIR_ROOT=str(workroot))
    coord = subprocess.Popen([V2V, "serve", "coordinator", "--listen", f"unix:{sock}", "--embedded", "1",
                              "--state", str(tmp_path / "s.db")], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert coord.poll() is None and time.monotonic() < deadline, coord.stderr.read()
            time.sleep(0.1)
        example = Path(__file__).resolve().parent.parent / "docs/examples/fleet-client.py"
        r = subprocess.run([V2V.parent / "python", example, f"unix:{sock}", plan], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("z: failed in check: ") and "missing" in r.stdout
    finally:
        coord.terminate()
        assert coord.wait(timeout=60) == 0


def test_event_log_keeps_steps_and_only_the_latest_progress():
    """Hours of copy progress must not grow the coordinator's memory: superseded progress goes,
    steps, states and each disk's newest progress stay, and a follower keeps its place."""
    def progress(gid: str, disk: int, done: int) -> GS.FleetEvent:
        return GS.FleetEvent(id=gid, event=pb.Event(progress=pb.Progress(disk=disk, bytes_done=done)))

    log = EventLog(compact_every=100)
    log.add(GS.FleetEvent(id="a", event=pb.Event(step=pb.StepEvent(step="copy", state=pb.STEP_STATE_STARTED))))
    seen, first = log.after(0)
    for n in range(1, 1001):
        for gid, disk in (("a", 0), ("a", 1), ("b", 0)):
            log.add(progress(gid, disk, n))
    log.add(GS.FleetEvent(id="a", status=GS.GuestStatus(id="a", state=GS.GUEST_STATE_SUCCEEDED)))
    assert log.last == 3002 and len(log) < 200
    last, rest = log.after(0)
    assert last == 3002 and rest[0] == first[0] and rest[-1].HasField("status")
    newest = {(fe.id, fe.event.progress.disk): fe.event.progress.bytes_done for fe in rest
              if fe.HasField("event") and fe.event.HasField("progress")}
    assert newest == {("a", 0): 1000, ("a", 1): 1000, ("b", 0): 1000}
    _, tail = log.after(seen)  # a follower that had the first event resumes after it
    assert tail == rest[1:]
