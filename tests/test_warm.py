"""Warm migration (docs/warm.md): rounds of changed blocks found through dirty bitmaps, from a qcow2
file written between rounds (qemu-io) and from a running qemu (QMP, written through its own
qemu-io monitor command). Each round must copy about what was dirtied (within 10%), and the target
must equal the source byte for byte before conversion. A cutover whose boot check fails resumes
the source it paused (rollback). Then (e2e) the real guest booting in qemu as the source while
precopy runs, and cutover with the boot check: the converted copy boots on virtio.

Cost: the round tests take ~30 s together (qemu-img, qemu-nbd, a qemu with no guest); the rollback
test ~1-2 min (a phony guest built and converted); the e2e test ~6-8 min (a TCG boot of the source,
one conversion, the boot check's TCG boot of the target)."""

from __future__ import annotations

import fcntl
import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from google.protobuf import json_format

from tests.conftest import Run, child_servers
from tests.guests import phony_rpm
from v2v.cli.warm_cmd import embedded_warm
from v2v.coordinator.warm.service import WARM_PHASES
from v2v.delta_copy import pieces
from v2v.extents import ExtentMap
from v2v.v1 import output_pb2, warm_pb2, warm_pb2_grpc
from v2v.v1 import types_pb2 as pb

MiB = 1 << 20
V2VRun = Callable[..., Run]


def qemu_io(image: Path, *commands: str) -> None:
    args = [a for c in commands for a in ("-c", c)]
    subprocess.run(["qemu-io", "-f", "qcow2", *args, str(image)], check=True, capture_output=True)


def bitmaps(image: Path) -> list[str]:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(image)], check=True,
                                     capture_output=True, text=True).stdout)
    return [b["name"] for b in info.get("format-specific", {}).get("data", {}).get("bitmaps", [])]


def identical(source: Path, target: Path) -> bool:
    res = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(source), str(target)],
                         capture_output=True, text=True, check=False)
    return res.returncode == 0


def events(run: Run) -> list[warm_pb2.WarmEvent]:
    """The WarmEvents of a --machine-readable run (a failed one ends with a {"status": ...} line)."""
    return [json_format.Parse(line, warm_pb2.WarmEvent()) for line in run.stdout.splitlines()
            if line.startswith("{") and not line.startswith('{"status"')]


def last_round(run: Run) -> warm_pb2.Round:
    rounds = [ev.round for ev in events(run) if ev.HasField("round")]
    assert rounds, run.stdout + run.stderr
    return rounds[-1]


def final_state(run: Run) -> warm_pb2.WarmState:
    states = [ev.state for ev in events(run) if ev.HasField("state")]
    assert run.rc == 0 and states, run.stdout + run.stderr
    return states[-1]


def assert_copied_about(r: warm_pb2.Round, dirtied: int) -> None:
    copied = sum(d.bytes_copied + d.bytes_zeroed for d in r.disks)
    assert abs(copied - dirtied) <= dirtied * 0.10, f"round {r.number}: {copied} bytes copied, {dirtied} dirtied"


def test_pieces_split_changed_ranges_by_data() -> None:
    changed = ExtentMap(100, [(0, 10), (20, 60), (90, 100)])
    data = ExtentMap(100, [(5, 25), (40, 45), (95, 200)])
    assert list(pieces(changed, data)) == [
        (0, 5, False), (5, 10, True), (20, 25, True), (25, 40, False), (40, 45, True), (45, 60, False),
        (90, 95, False), (95, 100, True)]


def test_refusals_are_one_clear_line(v2v: V2VRun, tmp_path: Path) -> None:
    source = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "16M"], check=True)
    null = v2v("warm", "start", "-o", "null", str(source))
    assert null.rc == 1 and "a warm migration needs an output whose disks can be reopened" in null.stderr
    assert bitmaps(source) == []
    elsewhere = v2v("warm", "precopy", str(tmp_path))
    assert elsewhere.rc == 1 and f"{tmp_path} holds no warm migration (warm.json is missing)" in elsewhere.stderr
    assert v2v("warm", "start", "-o", "local", "-os", str(tmp_path)).rc == 2  # no source disks


def test_rounds_from_a_qcow2_bitmap_copy_what_changed(v2v: V2VRun, tmp_path: Path) -> None:
    source, out = tmp_path / "src.qcow2", tmp_path / "out"
    out.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "256M"], check=True)
    qemu_io(source, "write -P 1 0 8M", "write -P 2 100M 4M")
    start = v2v("warm", "--machine-readable", "start", "-o", "local", "-os", str(out), str(source))
    state = final_state(start)
    assert state.phase == warm_pb2.WARM_PHASE_PRECOPY
    assert last_round(start).disks[0].bytes_copied == 12 * MiB  # only the data, not the 256 MiB
    target = Path(state.disks[0].target.path)
    assert target == out / "src-sda" and identical(source, target)
    assert bitmaps(source) == ["v2v-warm-0"]

    # Each round: what qemu-io dirtied, of which some becomes zero (a discard and a zero write).
    writes = [(["write -P 3 1M 2M", "write -P 4 200M 1M"], 3 * MiB),
              (["write -z 100M 4M", "write -P 5 255M 1M"], 5 * MiB),
              (["discard 0 1M", "write -P 6 64M 512k"], MiB + 512 * 1024)]
    for n, (commands, dirtied) in enumerate(writes, start=1):
        qemu_io(source, *commands)
        run = v2v("warm", "--machine-readable", "precopy", state.workdir)
        r = last_round(run)
        assert (r.number, r.kind) == (n, "precopy")
        assert_copied_about(r, dirtied)
        assert identical(source, target), f"round {n}: the target differs from the source"
        assert bitmaps(source) == [f"v2v-warm-{n}"], "the old bitmap must go, the new one stay"

    status = v2v("warm", "status", state.workdir)
    saved = json_format.Parse(status.stdout, warm_pb2.WarmState())
    assert [r.kind for r in saved.rounds] == ["full", "precopy", "precopy", "precopy"]
    assert saved.disks[0].checkpoint == "v2v-warm-3"


def test_a_failed_round_forgets_no_change(v2v: V2VRun, tmp_path: Path) -> None:
    """A round whose target is gone fails; the write it did not copy is copied by the next one."""
    source, out = tmp_path / "src.qcow2", tmp_path / "out"
    out.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "64M"], check=True)
    state = final_state(v2v("warm", "--machine-readable", "start", "-o", "local", "-os", str(out), str(source)))
    target = Path(state.disks[0].target.path)
    qemu_io(source, "write -P 7 4M 2M")
    target.rename(target.with_suffix(".away"))
    failed = v2v("warm", "precopy", state.workdir)
    assert failed.rc == 1 and "v2v: error:" in failed.stderr
    assert bitmaps(source) == ["v2v-warm-0"], "the failed round's bitmap is folded back into the old one"
    target.with_suffix(".away").rename(target)
    r = last_round(v2v("warm", "--machine-readable", "precopy", state.workdir))
    assert_copied_about(r, 2 * MiB)
    assert identical(source, target)

    # A round killed half-way (no cleanup): the next bitmap exists, the old one is frozen; a write lands
    # in the new one only. The next round folds it back and copies both.
    subprocess.run(["qemu-img", "bitmap", "--add", str(source), "v2v-warm-2"], check=True)
    qemu_io(source, "write -P 8 20M 1M")
    subprocess.run(["qemu-img", "bitmap", "--disable", str(source), "v2v-warm-1"], check=True)
    qemu_io(source, "write -P 9 30M 1M")
    r = last_round(v2v("warm", "--machine-readable", "precopy", state.workdir))
    assert_copied_about(r, 2 * MiB)
    assert identical(source, target) and bitmaps(source) == ["v2v-warm-2"]


def test_a_preallocated_target_stays_fully_allocated(v2v: V2VRun, tmp_path: Path) -> None:
    """-oa preallocated: the full copy and the rounds (zeroes, discards) never punch a hole."""
    source, out = tmp_path / "src.qcow2", tmp_path / "out"
    out.mkdir()
    size = 64 * MiB
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), str(size)], check=True)
    qemu_io(source, "write -P 1 0 16M", "write -P 2 40M 8M")
    state = final_state(v2v("warm", "--machine-readable", "start", "-o", "local", "-os", str(out), "-oa",
                            "preallocated", str(source)))
    target = Path(state.disks[0].target.path)
    qemu_io(source, "write -z 0 8M", "discard 40M 4M", "write -P 3 60M 1M")
    assert_copied_about(last_round(v2v("warm", "--machine-readable", "precopy", state.workdir)), 13 * MiB)
    assert identical(source, target)
    # qemu-img map cannot tell a hole from a fallocated extent (both read as zero, neither as data):
    # the blocks the file holds can.
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "raw", str(target)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["actual-size"] >= size, f"{info['actual-size']} of {size} bytes allocated: holes were punched"


@contextmanager
def warm_service(root: Path) -> Iterator[warm_pb2_grpc.WarmStub]:
    """The Warm service and its phase services in this process, over gRPC, as `v2v warm` runs it."""
    with embedded_warm({name: "" for name in WARM_PHASES}, root) as stub:
        yield stub


def lock_is_free(workdir: Path) -> bool:
    with open(workdir / "warm.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def dropped_when_copying(call: Iterator[warm_pb2.WarmEvent]) -> list[warm_pb2.WarmEvent]:
    """Reads the call's events until a disk's copy starts, then goes away (cancels the call)."""
    seen = []
    for ev in call:
        seen.append(ev)
        if ev.HasField("step") and (ev.step.step, ev.step.state) == ("copy", pb.STEP_STATE_STARTED):
            call.cancel()  # type: ignore[attr-defined]  (the iterator is a grpc.Call too)
            break
    return seen


def wait_until(what: str, ready: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        time.sleep(0.1)


def test_a_round_whose_client_goes_away_stops_and_frees_the_lock(workroot: Path, tmp_path: Path) -> None:
    """A dropped client cancels its round: the copy stops, the round is undone as a failed one (the
    bitmap folded back, no round recorded), nothing is left running, and the next round copies it all."""
    source, out = tmp_path / "src.qcow2", tmp_path / "out"
    out.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "2G"], check=True)
    qemu_io(source, "write -P 1 0 4M")
    output = output_pb2.OutputSpec(local=output_pb2.LocalOutput(directory=str(out)))
    with warm_service(workroot) as stub:
        start = list(stub.Start(warm_pb2.StartRequest(name="src", disks=[warm_pb2.WarmSource(qcow2=str(source))],
                                                      output=output)))
        state = start[-1].state
        qemu_io(source, *(f"write -P 2 {n * 512}M 512M" for n in range(2)))
        seen = dropped_when_copying(stub.Precopy(warm_pb2.PrecopyRequest(workdir=state.workdir)))
        assert not any(ev.HasField("round") for ev in seen), "the round ended before the client went away"
        wait_until("unlocked", lambda: lock_is_free(Path(state.path)))
        wait_until("stopped", lambda: child_servers() == [])
        assert bitmaps(source) == ["v2v-warm-0"], "the cancelled round's bitmap is folded back"
        assert len(stub.Status(warm_pb2.StatusRequest(workdir=state.workdir)).rounds) == 1
        done = list(stub.Precopy(warm_pb2.PrecopyRequest(workdir=state.workdir)))
        assert_copied_about(next(ev.round for ev in done if ev.HasField("round")), 1024 * MiB)
    assert identical(source, Path(state.disks[0].target.path))
    assert child_servers() == []


class Qemu:
    """A qemu whose disk is the qcow2 node disk0 of drive0. With no guest (-machine none, the
    default), tests write through HMP qemu-io, which takes drives, not nodes."""

    def __init__(self, image: Path, qmp: Path, machine: Sequence[str] = ("-machine", "none")) -> None:
        self.qmp = qmp
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", *machine, "-nodefaults", "-display", "none",
             "-drive", f"if=none,id=drive0,node-name=disk0,format=qcow2,file={image}",
             "-qmp", f"unix:{qmp},server=on,wait=off"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not qmp.exists():
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def command(self, command: str, **arguments: object) -> object:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.qmp))
            f = s.makefile("rw")
            f.readline()
            for msg in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments}):
                f.write(json.dumps(msg) + "\n")
                f.flush()
                while "event" in (reply := json.loads(f.readline())):
                    pass
                assert "error" not in reply, reply
            return reply["return"]

    def bitmaps(self) -> list[str]:
        nodes = self.command("query-named-block-nodes", flat=True)
        return [b["name"] for n in nodes if n["node-name"] == "disk0" for b in n.get("dirty-bitmaps", [])]

    def write(self, io_command: str) -> None:
        out = self.command("human-monitor-command", **{"command-line": f'qemu-io drive0 "{io_command}"'})
        assert "error" not in str(out).lower(), out

    def quit(self) -> None:
        if self.proc.poll() is None:
            self.command("quit")
        self.proc.wait(30)


@contextmanager
def running_qemu(image: Path, tmp_path: Path, machine: Sequence[str] = ("-machine", "none")) -> Iterator[Qemu]:
    # A short path (AF_UNIX's 108 bytes) of its own: named after tmp_path alone, it was the same
    # path for this test run from two checkouts at once, and one run's qemu answered the other's QMP.
    with tempfile.TemporaryDirectory(prefix="v2v-qmp-", dir="/tmp") as sockets:
        vm = Qemu(image, Path(sockets) / "qmp.sock", machine)
        try:
            yield vm
        finally:
            vm.proc.kill()
            vm.proc.wait()


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[tuple[Qemu, Path]]:
    image = tmp_path / "running.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "128M"], check=True)
    with running_qemu(image, tmp_path) as vm:
        yield vm, image


def test_rounds_from_a_running_qemu(v2v: V2VRun, tmp_path: Path, qemu: tuple[Qemu, Path]) -> None:
    vm, image = qemu
    out = tmp_path / "out"
    out.mkdir()
    vm.write("write -P 1 0 6M")
    start = v2v("warm", "--machine-readable", "start", "-o", "local", "-os", str(out), "--name", "vm",
                "--qmp", str(vm.qmp), "--node", "disk0")
    state = final_state(start)
    assert vm.bitmaps() == ["v2v-warm-0"]
    for n, (command, dirtied) in enumerate([("write -P 2 1M 3M", 3 * MiB), ("write -P 3 120M 2M", 2 * MiB)], 1):
        vm.write(command)
        assert_copied_about(last_round(v2v("warm", "--machine-readable", "precopy", state.workdir)), dirtied)
        assert vm.bitmaps() == [f"v2v-warm-{n}"]
    # A round that fails (its target gone) folds its bitmap back over the same QMP connection.
    target = Path(state.disks[0].target.path)
    vm.write("write -P 4 10M 1M")
    target.rename(target.with_suffix(".away"))
    assert v2v("warm", "precopy", state.workdir).rc == 1
    assert vm.bitmaps() == ["v2v-warm-2"]
    target.with_suffix(".away").rename(target)
    assert_copied_about(last_round(v2v("warm", "--machine-readable", "precopy", state.workdir)), MiB)
    refused = v2v("warm", "cutover", state.workdir)
    assert refused.rc == 1 and "still running" in refused.stderr
    vm.quit()
    assert identical(image, Path(state.disks[0].target.path))


@pytest.mark.appliance
def test_cutover_whose_boot_check_fails_rolls_back(v2v: V2VRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) \
        -> None:
    """A phony RHEL 9 as a running qemu's disk: cutover --stop-source pauses it and converts the copy;
    the boot check cannot run (its service is not there), so nothing proved the target boots:
    --rollback on-verify-failure resumes the source, the target stays, the phase says so."""
    image = tmp_path / "rhel9.qcow2"
    raw = phony_rpm.build(phony_rpm.rhel9(), tmp_path)
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(image)], check=True)
    out = tmp_path / "out"
    out.mkdir()
    with running_qemu(image, tmp_path) as vm:
        state = final_state(v2v("warm", "--machine-readable", "start", "-o", "local", "-os", str(out), "--name",
                                "rhel9", "--accel", "tcg", "--qmp", str(vm.qmp), "--node", "disk0"))
        monkeypatch.setenv("V2V_VERIFY", f"unix:{tmp_path / 'no-verify-service.sock'}")
        r = v2v("warm", "--machine-readable", "cutover", state.workdir, "--stop-source", "--verify-boot",
                "--rollback", "on-verify-failure", timeout=900)
        assert r.rc == 1, r.stdout + r.stderr
        assert vm.command("query-status")["running"], "the source was not resumed"  # type: ignore[index]
        steps = [ev.step for ev in events(r) if ev.HasField("step")]
        failed = [s for s in steps if s.state == pb.STEP_STATE_FAILED]
        assert failed and failed[0].step == "verify", steps
        assert "the converted target is kept for inspection; rollback: the source guest was resumed" in r.stderr, \
            r.stderr
        resumed = [s.message for s in steps if s.step == "rollback" and s.state == pb.STEP_STATE_NOTE]
        assert len(resumed) == 1 and resumed[0].endswith(" resumed: the source guest runs on"), steps
    status = json_format.Parse(v2v("warm", "status", state.workdir).stdout, warm_pb2.WarmState())
    assert status.phase == warm_pb2.WARM_PHASE_VERIFY_FAILED
    assert (out / "rhel9-sda").exists() and list(status.files) == [str(out / "rhel9-sda"), str(out / "rhel9.xml")]


@pytest.mark.e2e
def test_warm_migration_of_a_running_guest_boots_converted(v2v: V2VRun, tmp_path: Path, real_guest: Path) -> None:
    """The real guest boots (TCG, pvscsi) from an overlay while start and precopy copy it; it prints its
    marker and powers off (qemu stays: -no-shutdown); cutover converts the copy, and its boot check
    boots it on virtio."""
    original = real_guest.with_suffix(".qcow2")
    mtime = original.stat().st_mtime_ns
    overlay, out, serial = tmp_path / "running.qcow2", tmp_path / "out", tmp_path / "source-serial.log"
    out.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(original), "-F", "qcow2", str(overlay)],
                   check=True)
    machine = ["-machine", "pc", "-accel", "tcg", "-m", "1024", "-no-shutdown", "-serial", f"file:{serial}",
               "-device", "pvscsi,id=hba", "-device", "scsi-hd,drive=drive0,bus=hba.0,bootindex=0"]
    with running_qemu(overlay, tmp_path, machine) as vm:
        state = final_state(v2v("warm", "--machine-readable", "start", "--name", "debian12", "-o", "local",
                                "-os", str(out), "--accel", "tcg", "--qmp", str(vm.qmp), "--node", "disk0"))
        rounds = []
        deadline = time.monotonic() + 900
        while vm.command("query-status")["running"]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the source guest never powered off"
            rounds.append(last_round(v2v("warm", "--machine-readable", "precopy", state.workdir)))
            time.sleep(5)
        assert "GUEST-BOOTED-OK" in serial.read_text(errors="replace"), "the source guest did not boot"
        assert any(r.disks[0].bytes_copied for r in rounds), "the booting guest wrote nothing between rounds?"
        cutover = v2v("warm", "--machine-readable", "cutover", state.workdir, "--verify-boot", timeout=1800)
        done = final_state(cutover)
        assert vm.bitmaps() == []
    assert done.phase == warm_pb2.WARM_PHASE_DONE and done.rounds[-1].kind == "cutover"
    assert done.files == [str(out / "debian12-sda"), str(out / "debian12.xml")]
    assert '<target dev="vda" bus="virtio" />' in (out / "debian12.xml").read_text()
    # The proof: the cutover's own boot check booted the converted copy (docs/verify.md).
    booted = [ev.step.message for ev in events(cutover) if ev.HasField("step") and ev.step.step == "verify"
              and ev.step.state == pb.STEP_STATE_NOTE]
    assert len(booted) == 1 and "observed by probe" in booted[0] and "root /dev/vda3" in booted[0], booted
    assert original.stat().st_mtime_ns == mtime, "the real guest image must never be written"
