"""Fleets end to end on phony guests: eight guests through the whole pipeline at once under
limits on two workers, one failing in conversion (no OS) and one in copy (its target storage
fills up); and a coordinator killed mid-plan and started again on the same state.

Phony guests cannot run programs (no /bin/sh), so a conversion that must rebuild the initramfs
fails on them; `convertible` gives the phony Debian an initramfs that already holds the virtio
drivers (a gzip'd cpio listing virtio_blk.ko and virtio_pci.ko), which the conversion keeps.

Cost: the fixture one appliance; test_fleet_of_eight 8 appliances, two at a time;
test_coordinator_killed_mid_plan 2, one at a time. Measured at load ~25 on 2 cores: fixture
130-160 s, eight 520 s, kill/restart 225 s."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import V2V, tiny_filesystem
from v2v.cli.plan import parse_plan
from v2v.client import FleetClient
from v2v.coordinator.scheduler import Worker
from v2v.coordinator.servers import EmbeddedServices
from v2v.coordinator.state import State
from v2v.v1 import coordinator_pb2

GS = coordinator_pb2
pytestmark = [pytest.mark.appliance, pytest.mark.e2e]


@pytest.fixture(scope="module")
def convertible(phony: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phony Debian with an initramfs that needs no rebuild on KVM."""
    work = tmp_path_factory.mktemp("convertible")
    tree = work / "tree"
    for module in ("kernel/drivers/block/virtio_blk.ko", "kernel/drivers/virtio/virtio_pci.ko"):
        (tree / "usr/lib/modules/v2v" / module).parent.mkdir(parents=True, exist_ok=True)
        (tree / "usr/lib/modules/v2v" / module).touch()
    files = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files, capture_output=True,
                          check=True).stdout
    (work / "initrd.gz").write_bytes(gzip.compress(cpio))  # libguestfs lists gzip'd initramfs images
    image = work / "debian-virtio.img"
    subprocess.run(["cp", "--sparse=always", str(phony / "debian-single.img"), str(image)], check=True)
    subprocess.run(["guestfish", "-a", str(image), "-i", "glob", "upload", str(work / "initrd.gz"),
                    "/boot/initrd.img-*"], check=True, capture_output=True)
    return image


def plan_text(guests: list[dict], out: Path, **defaults: object) -> str:
    return yaml.safe_dump({"defaults": {"output": {"type": "local", "storage": str(out)}, "convert": {"accel": "tcg"},
                                        **defaults}, "guests": guests})


def intervals(state: State, step: str) -> list[tuple[str, float, float]]:
    """(worker, start, end) of every top-level `step` of every guest."""
    out = []
    for g in state.guests():
        out += [(g.worker, s.started, s.ended) for s in state.steps(g.id)
                if s.step == step and not s.parent and s.disk is None and s.ended]
    return out


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = peak = 0
    for _, d in edges:
        now += d
        peak = max(peak, now)
    return peak


def guest(name: str, *disks: Path, **more: object) -> dict:
    """A plan's guest, its target named after it (the phony images all call themselves the same)."""
    return {"name": name, "input": {"files": [str(d) for d in disks]}, "output": {"name": name}, **more}


def test_fleet_of_eight(convertible, phony, workroot, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    guests = [guest(f"g{n}", convertible) for n in range(5)]
    two = guest("two", convertible, phony / "blank.img", priority=5)
    two["input"]["format"] = "raw"  # the blank second disk is a disk only when declared raw
    guests.append(two)
    guests.append(guest("noos", phony / "data-nofs-os.img"))
    with tiny_filesystem(tmp_path / "tiny") as tiny:
        guests.append(guest("full", convertible, output={"name": "full", "storage": str(tiny)}))
        jobs = parse_plan(plan_text(guests, out)).jobs
        state_path = tmp_path / "state" / "coordinator.db"
        per_worker = Worker("template", None, conversions=1, copy_streams=2)  # type: ignore[arg-type]
        t0 = time.monotonic()
        with EmbeddedServices(workroot, workers=2, worker=per_worker, state=state_path) as address, \
                FleetClient(address) as fleet:
            ids = fleet.submit(jobs)
            final = {s.name: s for s in fleet.wait(ids)}
        took = time.monotonic() - t0
    print(f"8 guests in {took:.0f} s")
    assert set(final) == {g["name"] for g in guests}
    failed = {n: (s.error.step, s.error.message) for n, s in final.items() if s.state != GS.GUEST_STATE_SUCCEEDED}
    assert set(failed) == {"noos", "full"}, failed
    assert failed["noos"][0] == "convert"
    assert failed["full"][0] == "copy", failed["full"]
    for name in ("g0", "g1", "g2", "g3", "g4", "two"):
        assert final[name].files and all(Path(f).exists() for f in final[name].files), final[name]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("two-")) == ["two-sda", "two-sdb"]

    state = State(state_path)
    converts = intervals(state, "convert")
    workers = {w for w, _, _ in converts}
    assert workers == {"local0", "local1"}  # placed on both
    for w in workers:  # one conversion at a time on each
        assert most_at_once([(a, b) for ww, a, b in converts if ww == w]) == 1
    assert most_at_once([(a, b) for _, a, b in converts]) <= 2
    copied = {g.name: g.bytes_copied for g in state.guests()}
    assert copied["g0"] > 0 and copied["two"] > copied["noos"] == 0

    env = dict(os.environ, V2V_WORKDIR_ROOT=str(workroot))
    status = subprocess.run([V2V, "status", "--state", str(state_path), "--json"], capture_output=True, text=True,
                            env=env, check=True)
    rows = {r["name"]: r for r in map(json.loads, status.stdout.splitlines())}
    assert rows["full"]["state"] == "failed" and rows["full"]["error"]["step"] == "copy"
    assert rows["g0"]["state"] == "succeeded" and {s["step"] for s in rows["g0"]["steps"]} >= {
        "open", "check", "convert", "setup", "copy", "finalize"}
    logs = subprocess.run([V2V, "logs", "full", "copy", "--state", str(state_path)], capture_output=True, text=True,
                          env=env, check=True)
    records = [json.loads(line) for line in logs.stdout.splitlines()]
    assert any(r.get("event", {}).get("state") == "STEP_STATE_FAILED" for r in records)
    assert any(r.get("process", "").startswith("copy-disk0") for r in records), records[-5:]
    convert_log = subprocess.run([V2V, "logs", "g0", "convert", "--state", str(state_path)], capture_output=True,
                                 text=True, env=env, check=True)
    assert '"process":"convert-appliance.log"' in convert_log.stdout


# ------------------------------------------------------------------------------- kill and restart

class Services:
    """The four phase services and a coordinator, each its own `v2v serve` process."""

    def __init__(self, base: Path, workroot: Path, state: Path, metrics_port: int) -> None:
        self.base, self.state, self.port = base, state, metrics_port
        self.env = dict(os.environ, V2V_WORKDIR_ROOT=str(workroot))
        self.workroot = workroot
        self.phases: dict[str, subprocess.Popen] = {}
        self.coordinator: subprocess.Popen | None = None

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        sock = self.base / f"{name}.sock"
        sock.unlink(missing_ok=True)
        proc = subprocess.Popen([V2V, "serve", name, "--listen", f"unix:{sock}", *args], env=self.env,
                                stderr=open(self.base / f"{name}.log", "a"))
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (self.base / f"{name}.log").read_text()
            time.sleep(0.1)
        return proc

    def start_phases(self) -> None:
        for name in ("input", "convert", "output", "copier"):
            self.phases[name] = self._start(name)

    def start_coordinator(self) -> str:
        worker = "w1=" + ",".join(f"{s}@unix:{self.base / s}.sock" for s in ("input", "convert", "output", "copier"))
        # One source host, one guest at a time: `first` ends before `second` starts.
        self.coordinator = self._start("coordinator", "--worker", worker, "--per-source-host", "1", "--state",
                                       str(self.state), "--workdir-root", str(self.workroot),
                                       "--metrics", f"127.0.0.1:{self.port}")
        return f"unix:{self.base / 'coordinator.sock'}"

    def stop(self) -> None:
        procs = [p for p in [self.coordinator, *reversed(self.phases.values())] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def guest_row(state: Path, name: str) -> dict:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM guests WHERE name = ?", (name,)).fetchone()
    return dict(row) if row else {}


def test_coordinator_killed_mid_plan(convertible, workroot, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text([guest("first", convertible, priority=1), guest("second", convertible)], out))
    state = tmp_path / "state.db"
    svc = Services(tmp_path, workroot, state, free_port())
    try:
        svc.start_phases()
        address = svc.start_coordinator()
        fleet = subprocess.Popen([V2V, "fleet", str(plan), "--coordinator", address, "--machine-readable"],
                                 env=svc.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Stop the copier as soon as second's target is being set up, so its copy cannot end, and
        # kill the coordinator there.
        deadline = time.monotonic() + 600
        while not guest_row(state, "second").get("target_open"):
            assert time.monotonic() < deadline and svc.coordinator.poll() is None, fleet.stderr
            time.sleep(0.02)
        os.kill(svc.phases["copier"].pid, signal.SIGSTOP)
        svc.coordinator.kill()
        svc.coordinator.wait()
        os.kill(svc.phases["copier"].pid, signal.SIGCONT)
        assert fleet.wait(timeout=60) != 0  # its coordinator went away
        assert guest_row(state, "first")["state"] == GS.GUEST_STATE_SUCCEEDED
        before = guest_row(state, "second")
        assert before["state"] == GS.GUEST_STATE_RUNNING and before["target_open"]

        address = svc.start_coordinator()
        again = subprocess.run([V2V, "fleet", str(plan), "--coordinator", address, "--machine-readable"],
                               env=svc.env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert "already known" in again.stderr
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{svc.port}/metrics", timeout=10).read().decode()
    finally:
        svc.stop()
    st = State(state)
    first, second = st.guest("first"), st.guest("second")
    assert (first.state, first.attempt) == (GS.GUEST_STATE_SUCCEEDED, 1)  # finished: left alone
    assert second.state == GS.GUEST_STATE_SUCCEEDED and second.attempt == 2 and second.target_interrupted
    steps = st.steps(second.id)
    top = [(s.attempt, s.step) for s in steps if not s.parent and s.disk is None]
    # converted once: the second attempt took the surviving conversion from setup on
    assert [s for a, s in top if s == "convert"] == ["convert"]
    assert [s for a, s in top if a == 2] == ["setup", "copy", "finalize"]
    assert sorted(p.name for p in out.iterdir()) == ["first-sda", "first.xml", "second-sda", "second.xml"]
    assert 'v2v_guests{state="succeeded"} 2.0' in metrics
    assert 'v2v_step_duration_seconds_count{outcome="succeeded",step="copy"} 1.0' in metrics


# ------------------------------------------------------------------------------- workers on other hosts

PHASES = ("input", "convert", "output", "copier")


def wait_listening(address: str, port: int, proc: subprocess.Popen, log: Path) -> None:
    import socket

    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


@contextmanager
def network_namespace(name: str, subnet: int) -> Iterator[str]:
    """A network namespace joined to this one by a veth pair: 10.231.SUBNET.1 here, .2 there.
    Yields the namespace's address."""
    host, inside = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    ns = f"{name}-{os.getpid()}"
    veth = f"v2v{subnet}-{os.getpid() % 10000}"
    cmds = [["ip", "netns", "add", ns],
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
            ["ip", "addr", "add", f"{host}/30", "dev", veth], ["ip", "link", "set", veth, "up"],
            ["ip", "-n", ns, "addr", "add", f"{inside}/30", "dev", "eth0"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"], ["ip", "-n", ns, "link", "set", "lo", "up"]]
    try:
        for cmd in cmds:
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                pytest.skip(f"cannot make a network namespace: {' '.join(cmd)}: {res.stderr.strip()}")
        yield inside
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)  # takes the veth pair along


@contextmanager
def worker_host(name: str, subnet: int, root: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """The four phase services of one worker as if on a host of their own: in a network namespace
    of their own, listening on its address with mutual TLS, and in a mount namespace where their
    work-directory root is a private tmpfs that no other process (the coordinator included) can see.
    Yields the worker's --worker address list."""
    root.mkdir()
    with network_namespace(name, subnet) as address:
        ports = {s: 50061 + n for n, s in enumerate(PHASES)}  # the same on every worker: each has its own network
        serve = " & ".join(f"{V2V} serve {s} --listen {address}:{p}" for s, p in ports.items())
        script = f"mount -t tmpfs -o mode=0700 tmpfs {root} || exit 97; {serve} & wait"
        proc = subprocess.Popen(["ip", "netns", "exec", f"{name}-{os.getpid()}", "unshare", "--mount",
                                 "--propagation", "private", "sh", "-c", script],
                                env=dict(env, V2V_WORKDIR_ROOT=str(root)), stderr=open(log, "w"),
                                start_new_session=True)
        try:
            for port in ports.values():
                wait_listening(address, port, proc, log)
            yield ",".join(f"{s}@{address}:{p}" for s, p in ports.items())
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_workers_on_other_hosts(convertible, tmp_path):
    """Two workers, each in network and mount namespaces of its own, that the coordinator reaches
    only over mTLS TCP at their namespace addresses and whose files it cannot see: each guest's work
    directory is made, used and removed on its worker, never by the coordinator."""
    subprocess.run([V2V, "certs", str(tmp_path / "certs"), "--host", "10.231.1.2", "--host", "10.231.2.2"],
                   check=True, capture_output=True, timeout=60)
    coordinator_root = tmp_path / "coordinator"
    coordinator_root.mkdir()
    env = dict(os.environ, V2V_TLS_DIR=str(tmp_path / "certs"), V2V_WORKDIR_ROOT=str(coordinator_root))
    out = tmp_path / "out"
    out.mkdir()
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text([guest("a", convertible), guest("b", convertible)], out))
    roots = {w: tmp_path / f"{w}-root" for w in ("w1", "w2")}
    sock = tmp_path / "coordinator.sock"
    with worker_host("v2v-w1", 1, roots["w1"], env, tmp_path / "w1.log") as w1, \
            worker_host("v2v-w2", 2, roots["w2"], env, tmp_path / "w2.log") as w2:
        coordinator = subprocess.Popen(
            [V2V, "serve", "coordinator", "--listen", f"unix:{sock}", "--state", str(tmp_path / "state.db"),
             "--worker", f"w1={w1},conversions=1", "--worker", f"w2={w2},conversions=1"],
            env=env, stderr=open(tmp_path / "coordinator.log", "w"))
        try:
            deadline = time.monotonic() + 60
            while not sock.exists():
                assert coordinator.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "coordinator.log").read_text()
                time.sleep(0.1)
            fleet = subprocess.run([V2V, "fleet", str(plan), "--coordinator", f"unix:{sock}", "--machine-readable"],
                                   env=env, capture_output=True, text=True, timeout=900)
        finally:
            coordinator.terminate()
            coordinator.wait(timeout=120)
    assert fleet.returncode == 0, fleet.stderr + (tmp_path / "w1.log").read_text()
    rows = {n: guest_row(tmp_path / "state.db", n) for n in ("a", "b")}
    assert {r["state"] for r in rows.values()} == {GS.GUEST_STATE_SUCCEEDED}
    assert {r["worker"] for r in rows.values()} == {"w1", "w2"}  # one guest each: both converted at once
    # Each guest's work directory was on its worker, under that worker's root ...
    for row in rows.values():
        assert f"work directory {roots[row['worker']]}/{row['name']}." in fleet.stdout
    # ... which the coordinator's side never saw: the roots are empty here, no work directory was made locally.
    assert [list(r.iterdir()) for r in roots.values()] == [[], []]
    assert not [p for p in coordinator_root.iterdir() if p.name.startswith(("a.", "b."))]
    assert sorted(p.name for p in out.iterdir()) == ["a-sda", "a.xml", "b-sda", "b.xml"]
