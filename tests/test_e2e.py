"""End to end on the real VMware-looking Debian 12 guest: convert with the CLI, boot the result
under virtio, the source unchanged, nothing left running. And a copier killed mid-copy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import V2V, children_mentioning, sha256, sockets_under

pytestmark = pytest.mark.e2e


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_convert_boots_under_virtio(v2v, real_guest, tmp_path):
    before = sha256(real_guest)
    out = tmp_path / "out"
    out.mkdir()
    r = v2v("-i", "disk", str(real_guest), "-o", "local", "-os", str(out), "-of", "qcow2", "--machine-readable",
            "--accel", "tcg", "--verify-boot=strict")
    assert r.rc == 0, r.stderr
    evs = events(r.stdout)
    status = evs[-1]["status"]
    assert status["state"] == "GUEST_STATE_SUCCEEDED"

    # Every top-level step started and succeeded, with a duration, in order.
    done = [e["step"]["step"] for e in evs if "step" in e and not e["step"].get("parent")
            and e["step"]["state"] == "STEP_STATE_SUCCEEDED"]
    assert done == ["open", "check", "convert", "setup", "copy", "finalize", "verify"]
    # The boot check of --verify-boot (docs/verify.md): its own sub-steps, under the coordinator's verify step.
    assert {"probe"} <= {e["step"]["step"] for e in evs if e.get("step", {}).get("parent") == "verify"}
    assert all("duration" in e["step"] for e in evs if "step" in e and e["step"]["state"] == "STEP_STATE_SUCCEEDED")
    subs = {e["step"]["step"] for e in evs if e.get("step", {}).get("parent") == "convert"}
    assert {"launch", "inspect", "remove-tools", "devices", "initramfs", "fstrim"} <= subs
    progress = [e["progress"] for e in evs if "progress" in e]
    assert progress and int(progress[-1]["bytes_done"]) == int(progress[-1]["bytes_total"]) > 0

    disk = out / "debian12-vmware-sda"
    xml = out / "debian12-vmware.xml"
    assert status["files"] == [str(disk), str(xml)]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", disk], capture_output=True, text=True,
                                     check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == real_guest.stat().st_size
    subprocess.run(["virt-xml-validate", xml, "domain"], check=True, capture_output=True)
    assert "<target dev='vda' bus='virtio'" in xml.read_text().replace('"', "'")

    # The proof is --verify-boot's own boot: it reports what the guest showed in the verify step's note
    # (one boot, not a second one by boot-test.sh).
    booted = [e["step"]["message"] for e in evs if e.get("step", {}).get("step") == "verify"
              and e["step"]["state"] == "STEP_STATE_NOTE"]
    assert len(booted) == 1 and "observed by probe" in booted[0], booted
    assert "root /dev/vda3" in booted[0] and "failed units: none" in booted[0], booted
    # Strict: the check expected what the conversion kept (the NIC the network step pinned as ens192,
    # the fstab's / and /boot) and the guest came up with it, or it would have failed at verify.
    expected = [e["step"]["message"] for e in evs if e.get("step", {}).get("step") == "expect"]
    assert len(expected) == 1 and expected[0].startswith("NIC ens192 (52:54:00:"), expected
    assert "mounts /, /boot; no failed unit" in expected[0] and "nics ens192 52:54:00:" in booted[0], booted
    removed = [e["step"]["message"] for e in evs if e.get("step", {}).get("step") == "remove-tools"
               and e["step"]["state"] == "STEP_STATE_NOTE"]
    assert any("removed" in m and "open-vm-tools" in m for m in removed), removed

    assert sha256(real_guest) == before


def serve(name: str, sockdir: Path, workroot: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, V2V_WORKDIR_ROOT=str(workroot))
    p = subprocess.Popen([V2V, "serve", name, "--listen", f"unix:{sockdir}/{name}.sock", *extra], env=env,
                         stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (sockdir / f"{name}.sock").exists():
        assert p.poll() is None and time.monotonic() < deadline, f"v2v serve {name} did not start"
        time.sleep(0.1)
    return p


def test_copier_killed_mid_copy(real_guest, tmp_path, workroot):
    """Separate service processes; the copier is SIGKILLed at its first progress report."""
    before = sha256(real_guest)
    sockdir = tmp_path / "svc"
    sockdir.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    procs = {n: serve(n, sockdir, workroot) for n in ("input", "convert", "output", "copier")}
    procs["coordinator"] = serve("coordinator", sockdir, workroot,
                                 *[a for n in ("input", "convert", "output", "copier")
                                   for a in (f"--{n}", f"unix:{sockdir}/{n}.sock")])
    try:
        cli = subprocess.Popen([V2V, "--coordinator", f"unix:{sockdir}/coordinator.sock", "-i", "disk", real_guest,
                                "-o", "local", "-os", out, "--machine-readable", "--accel", "tcg"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = False
        for line in cli.stdout:
            if not killed and '"progress"' in line:
                procs["copier"].send_signal(signal.SIGKILL)
                killed = True
        stderr = cli.stderr.read()
        assert cli.wait(timeout=120) == 1
        assert killed, "the copy never reported progress"
        errors = [line for line in stderr.splitlines() if line.startswith("v2v: error:")]
        assert len(errors) == 1 and "guest debian12-vmware: step copy: disk 0:" in errors[0], stderr
        procs["copier"].wait(timeout=10)
        deadline = time.monotonic() + 10  # nbdcopy dies with its parent: the kernel does it, asynchronously
        while children_mentioning(str(workroot)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert children_mentioning(str(workroot)) == []
        assert sockets_under(workroot) == []
        assert list(out.iterdir()) == [], "the output's partial disk was not removed"
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(timeout=30)
    assert sha256(real_guest) == before
