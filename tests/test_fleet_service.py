"""The coordinator's fleet RPCs, restart and metrics with the real services and no appliance: the
guests only open their phony disks (print_source) or fail in check, which is enough to drive the
queue, Follow, Cancel, Retry, the state and the metrics. ~10 s idle (3 min at load ~25)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.conftest import V2V
from tests.test_fleet import free_port
from v2v.client import FleetClient
from v2v.coordinator.clients import ServiceAddresses
from v2v.coordinator.scheduler import Limits, Worker
from v2v.coordinator.servers import CoordinatorConfig, EmbeddedServices, coordinator_servicer
from v2v.coordinator.service import EventLog
from v2v.coordinator.state import GuestRecord, State
from v2v.grpcserver import RunningService
from v2v.services.input.service import InputService
from v2v.services.servicers import PHASES, phase_servicer
from v2v.v1 import coordinator_pb2, input_pb2, input_pb2_grpc, output_pb2
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


# ----------------------------------------------------- status and logs through the coordinator's RPCs

class LoggingInput(InputService):
    """The real input service, whose Open also writes to the work directory's logs/ as the processes
    it starts do (a complete line, and one still being written), and first waits, for a guest named
    "held", until the test lets it go."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.held = threading.Event()
        self.release = threading.Event()

    def open(self, request: input_pb2.OpenRequest) -> input_pb2.OpenResponse:
        if request.guest == "held":
            self.held.set()
            assert self.release.wait(60)
        resp = super().open(request)
        with open(WorkDir(resp.workdir, self.root).log("input-note.log"), "a") as f:
            f.write(f"{request.guest}: served by a worker elsewhere\nhalf a li")
        return resp


@contextmanager
def remote_worker_coordinator(workroot: Path, state: Path) -> Iterator[tuple[str, LoggingInput]]:
    """A coordinator whose one worker's work-directory root is, for it, on another host (a path it
    does not have): what it learns of the work directories, it learns through the services' RPCs."""
    sockets = Path(tempfile.mkdtemp(prefix="v2v-c.", dir="/tmp"))
    logging_input = LoggingInput(workroot)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, sockets)
        running = {s: RunningService(f"unix:{sockets}/{s}.sock", phase_servicer(s, workroot)) for s in PHASES
                   if s != "input"}
        running["input"] = RunningService(f"unix:{sockets}/input.sock", (
            logging_input, input_pb2_grpc.add_InputServicer_to_server, "v2v.v1.Input"))
        for svc in running.values():
            stack.callback(svc.stop)
        worker = Worker("far", ServiceAddresses(**{s: str(svc.address) for s, svc in running.items()}),
                        workdir_root=Path("/nonexistent/another-host"))
        coord = RunningService(f"unix:{sockets}/coordinator.sock",
                               coordinator_servicer(CoordinatorConfig([worker], state=state)))
        stack.callback(coord.stop)
        yield str(coord.address), logging_input


def v2v_json(*args: str) -> list[dict[str, Any]]:
    r = subprocess.run([V2V, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_status_and_logs_ask_the_coordinator(phony, workroot, tmp_path):
    """`v2v status` and `v2v logs --coordinator ADDR` show what the coordinator holds, its worker's
    process log lines included (through the input's ReadLogs: the coordinator cannot see the
    files); `logs --follow` streams a guest live until it ends; and the same answers come from the
    state database alone once the coordinator is gone."""
    disk = phony / "debian-single.img"
    state = tmp_path / "state" / "s.db"
    with remote_worker_coordinator(workroot, state) as (address, logging_input), FleetClient(address) as fleet:
        [done] = fleet.submit([source_only("done", disk)])
        fleet.wait([done])
        [held] = fleet.submit([source_only("held", disk)])
        assert logging_input.held.wait(30)
        live: list[GS.LogRecord] = []
        started = threading.Event()

        def follow() -> None:
            for r in fleet.logs("held", follow=True):
                live.append(r)
                started.set()

        follower = threading.Thread(target=follow)
        follower.start()
        assert started.wait(30)  # the open step's start, while the guest is held in it
        assert [(r.step, r.event.state) for r in live] == [("open", pb.STEP_STATE_STARTED)]
        logging_input.release.set()
        follower.join(timeout=60)
        assert not follower.is_alive()  # the stream ended with the guest
        assert fleet.status(held).state == GS.GUEST_STATE_SUCCEEDED
        assert ("open", "input-note.log", "held: served by a worker elsewhere") in [
            (r.step, r.process.process, r.process.line) for r in live if r.HasField("process")]
        assert [(r.step, r.event.state) for r in live if r.HasField("event")][-1] == ("open",
                                                                                   pb.STEP_STATE_SUCCEEDED)

        rows = {r["name"]: r for r in v2v_json("status", "--coordinator", address, "--json")}
        assert rows["done"]["state"] == rows["held"]["state"] == "succeeded"
        assert rows["done"]["worker"] == "far" and rows["done"]["id"] == done
        [step] = rows["done"]["steps"]  # print_source: the source opened, reported, closed
        assert (step["step"], step["state"], step["attempt"], step["disk"]) == ("open", "succeeded", 1, None)
        assert step["duration"] > 0 and step["ended"] >= step["started"] >= rows["done"]["submitted"]
        logs = v2v_json("logs", "done", "--coordinator", address)
        assert {"guest": "done", "attempt": 1, "step": "open", "process": "input-note.log",
                "line": "done: served by a worker elsewhere"} in logs
        assert not any("half a li" in r.get("line", "") for r in logs)  # not a line until it ends
        assert {r["step"] for r in v2v_json("logs", done, "open", "--coordinator", address)} == {"open"}
        missing = subprocess.run([V2V, "logs", "nobody", "--coordinator", address], capture_output=True, text=True)
        assert missing.returncode == 1 and "no guest with id or name 'nobody'" in missing.stderr

    offline = v2v_json("status", "--state", str(state), "--json")
    assert [(r["name"], r["state"]) for r in offline] == [("done", "succeeded"), ("held", "succeeded")]
    assert offline[0]["steps"] == rows["done"]["steps"]
    assert v2v_json("logs", "done", "--state", str(state)) == logs


def test_status_without_a_coordinator_resumes_nothing(tmp_path):
    """Asking the database of a coordinator that stopped mid-run shows the guest as it was left and
    leaves it so: the read-only view runs nothing (a coordinator started on it would resume it)."""
    state = State(tmp_path / "s.db")
    state.add(GuestRecord(id="r1", seq=0, name="running", job=source_only("running", tmp_path / "x.img"),
                          state=GS.GUEST_STATE_RUNNING, submitted=time.time(), attempt=1))
    state.update("r1", step="copy", worker="w1")
    state.close()
    [row] = v2v_json("status", "--state", str(tmp_path / "s.db"), "--json")
    assert (row["name"], row["state"], row["step"], row["attempt"]) == ("running", "running", "copy", 1)
    human = subprocess.run([V2V, "status", "--state", str(tmp_path / "s.db")], capture_output=True, text=True,
                           check=True)
    assert "running" in human.stdout and "copy" in human.stdout
    again = State(tmp_path / "s.db").guest("r1")
    assert (again.state, again.attempt) == (GS.GUEST_STATE_RUNNING, 1)
    none = subprocess.run([V2V, "status", "--state", str(tmp_path / "none.db")], capture_output=True, text=True)
    assert none.returncode == 1 and "no state database at" in none.stderr


def test_read_logs_gives_complete_lines_after_offsets(workroot):
    """The input's ReadLogs: each log file's complete lines after the offset asked, the next offset,
    and at most about a MiB an answer (`more`), a line longer than that cut rather than never sent."""
    wd = WorkDir("logs-guest.1", workroot).ensure()
    wd.log("a.log").write_text("one\ntwo\nthr")
    wd.log("b.log").write_bytes(b"\xff bad utf-8\n")
    svc = RunningService(f"unix:{workroot}/in.sock", phase_servicer("input", workroot))
    ch = grpc.insecure_channel(str(svc.address))
    try:
        stub = input_pb2_grpc.InputStub(ch)
        first = stub.ReadLogs(input_pb2.ReadLogsRequest(workdir=wd.name))
        assert [(log.name, log.offset, list(log.lines)) for log in first.logs] == [
            ("a.log", 8, ["one", "two"]), ("b.log", 12, ["\ufffd bad utf-8"])] and not first.more
        with open(wd.log("a.log"), "a") as f:
            f.write("ee\n" + "x" * (3 << 20) + "\n")
        offsets = {log.name: log.offset for log in first.logs}
        lines: list[str] = []
        for _ in range(10):
            answer = stub.ReadLogs(input_pb2.ReadLogsRequest(workdir=wd.name, offsets=offsets))
            assert sum(len(line) + 1 for log in answer.logs for line in log.lines) <= (1 << 20) + 1
            for log in answer.logs:
                offsets[log.name] = log.offset
                lines += log.lines
            if not answer.more:
                break
        assert not answer.more and offsets["a.log"] == wd.log("a.log").stat().st_size
        assert lines[0] == "three" and "".join(lines[1:]) == "x" * (3 << 20) and len(lines) > 3
        assert stub.ReadLogs(input_pb2.ReadLogsRequest(workdir="gone.1")).logs == []
    finally:
        ch.close()
        svc.stop()
