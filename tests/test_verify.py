"""The boot check on the real Debian guest: converted, it boots and the probe reports its NIC and
root device; unconverted on virtio-blk, it stops in the initramfs shell; converted but with an fstab
line for a filesystem that does not exist, systemd stops in emergency mode; with a kernel command
line whose init exits, the kernel panics; a check whose client is killed mid-boot leaves no qemu.
The target is never written. Each boot costs 20-90 s under TCG, so each test boots once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import guestfs
import pytest
from google.protobuf import json_format

from tests.conftest import V2V, sha256
from v2v.v1 import types_pb2 as pb

pytestmark = [pytest.mark.appliance, pytest.mark.e2e]


def qemus_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and os.path.basename(args[0]).startswith(b"qemu-system") and text.encode() in b" ".join(args):
            found.append(pid)
    return found


def result_of(stdout: str) -> dict:
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return next(line["result"] for line in lines if "result" in line)


def test_converted_guest_boots(v2v, converted: tuple[pb.TargetMeta, Path], workroot: Path, tmp_path: Path) -> None:
    """Through -o json's target description, as the coordinator will pass Finalize's TargetMeta."""
    target, disk = converted
    before = sha256(disk)
    doc = tmp_path / "target.json"
    doc.write_text(json.dumps({"target": json_format.MessageToDict(target)}))
    r = v2v("verify-boot", "--target", str(doc), "--accel", "tcg", "--timeout", "400", "--machine-readable")
    res = result_of(r.stdout)
    assert r.rc == 0, r.stdout + r.stderr
    assert res["outcome"] == "VERIFY_OUTCOME_BOOTED" and res["observed_by"] == "OBSERVED_BY_PROBE", res
    obs = res["observed"]
    assert obs["root_device"] == "/dev/vda3"
    assert [n["name"] for n in obs["nics"]] == ["ens192"]  # the source's name, kept by the conversion
    assert obs["nics"][0]["mac"] == target.nics[0].mac.lower()
    assert {m["mountpoint"] for m in obs["mounts"]} >= {"/", "/boot"}
    assert obs["os"]["id"] == "debian" and 0 < res["seconds_to_userspace"] < 400
    assert res["accelerator"] == "ACCELERATOR_TCG"
    assert sha256(disk) == before
    assert qemus_mentioning(str(workroot)) == [] and list((workroot / "verify").iterdir()) == []


def test_unconverted_guest_stops_in_initramfs(v2v, real_guest: Path, workroot: Path) -> None:
    """Its initramfs has no virtio driver: on virtio-blk the root device never appears."""
    before = sha256(real_guest)
    r = v2v("verify-boot", str(real_guest), "--bus", "virtio", "--accel", "tcg", "--timeout", "400",
            "--machine-readable")
    assert r.rc == 1, r.stdout + r.stderr
    res = result_of(r.stdout)
    assert (res["outcome"], res["cause"]) == ("VERIFY_OUTCOME_FAILED", "VERIFY_CAUSE_INITRAMFS_SHELL"), res
    assert any("Dropping to a shell" in line for line in res["console_tail"])
    assert 0 < len(res["console_tail"]) <= 50
    steps = [json.loads(line)["step"] for line in r.stdout.splitlines() if line.startswith('{"step"')]
    failed = [s for s in steps if s["step"] == "verify" and s["state"] == "STEP_STATE_FAILED"]
    assert failed and failed[0]["error"]["code"] == "ERROR_CODE_BOOT_FAILED"
    assert sha256(real_guest) == before
    assert qemus_mentioning(str(workroot)) == []


# How a converted guest is broken, on an overlay of its disk: (file in the guest, edit of its text).
BREAKAGES = {
    # No such filesystem; a 1 s device timeout instead of systemd's 90 s, and no `nofail`, so
    # local-fs.target fails and systemd goes to emergency mode.
    "emergency": ("/etc/fstab", lambda text: text + "UUID=0badc0de-0000-4000-8000-000000000000 /data ext4 "
                  "defaults,x-systemd.device-timeout=1s 0 2\n"),
    # The initramfs hands over to an init that exits at once: "Attempted to kill init!".
    "panic": ("/boot/grub/grub.cfg", lambda text: re.sub(r"^(\s*linux\s+/\S+.*)$", r"\1 init=/bin/false", text,
                                                          flags=re.MULTILINE)),
}


@pytest.fixture(scope="module")
def broken(converted: tuple[pb.TargetMeta, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each breakage on its own qcow2 overlay of the converted disk, all edited in one appliance
    launch: breakage -> a target description (-o json's) that names the overlay."""
    target, disk = converted
    out = tmp_path_factory.mktemp("broken")
    g = guestfs.GuestFS(python_return_dict=True)
    overlays = {}
    for name in BREAKAGES:
        overlays[name] = out / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk), "-F", "qcow2",
                        str(overlays[name])], check=True)
        g.add_drive_opts(str(overlays[name]), format="qcow2")
    g.launch()
    try:
        for root, (name, (path, edit)) in zip(sorted(g.inspect_os()), BREAKAGES.items(), strict=True):
            disk = root.rstrip("0123456789")
            for mountpoint, device in sorted(g.inspect_get_mountpoints(root).items()):
                # Both overlays hold the same filesystem UUIDs, which inspection resolves to the
                # first disk: each root's filesystems are on its own disk.
                g.mount(re.sub(r"^/dev/sd[a-z]+", disk, device), mountpoint)
            before = g.cat(path)
            g.write(path, edit(before))
            assert g.cat(path) != before, f"{name}: {path} unchanged"
            g.umount_all()
    finally:
        g.shutdown()
        g.close()
    docs = {}
    for name, overlay in overlays.items():
        meta = pb.TargetMeta()
        meta.CopyFrom(target)
        meta.disks[0].path = str(overlay)
        docs[name] = out / f"{name}.json"
        docs[name].write_text(json.dumps({"target": json_format.MessageToDict(meta)}))
    return docs


@pytest.mark.parametrize(("breakage", "cause", "console"), [
    ("emergency", "VERIFY_CAUSE_EMERGENCY_MODE", "emergency mode"),
    ("panic", "VERIFY_CAUSE_PANIC", "Kernel panic - not syncing"),
])
def test_broken_guest_fails_with_its_cause(v2v, broken: dict[str, Path], workroot: Path, breakage: str,
                                           cause: str, console: str) -> None:
    overlay = Path(json.loads(broken[breakage].read_text())["target"]["disks"][0]["path"])
    before = sha256(overlay)
    r = v2v("verify-boot", "--target", str(broken[breakage]), "--accel", "tcg", "--timeout", "400",
            "--machine-readable")
    assert r.rc == 1, r.stdout + r.stderr
    res = result_of(r.stdout)
    assert (res["outcome"], res["cause"]) == ("VERIFY_OUTCOME_FAILED", cause), res
    assert any(console in line for line in res["console_tail"]), res["console_tail"]
    assert sha256(overlay) == before
    assert qemus_mentioning(str(workroot)) == []


def test_killed_client_leaves_no_qemu(real_guest: Path, workroot: Path, tmp_path: Path) -> None:
    """`v2v serve verify` in its own process; the CLI is SIGKILLed once qemu runs: the call's
    cancellation kills qemu and removes the overlay."""
    env = dict(os.environ, V2V_WORKDIR_ROOT=str(workroot))
    sock = tmp_path / "verify.sock"
    server = subprocess.Popen([V2V, "serve", "verify", "--listen", f"unix:{sock}"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert server.poll() is None and time.monotonic() < deadline, "v2v serve verify did not start"
            time.sleep(0.1)
        cli = subprocess.Popen([V2V, "verify-boot", str(real_guest), "--verify", f"unix:{sock}", "--accel", "tcg",
                                "--machine-readable"], env=env, stdout=subprocess.PIPE, text=True)
        assert cli.stdout is not None
        for line in cli.stdout:
            if '"step":"boot"' in line and "STEP_STATE_STARTED" in line:
                break
        else:
            pytest.fail("the check never started booting")
        deadline = time.monotonic() + 30
        while not qemus_mentioning(str(workroot)):
            assert time.monotonic() < deadline, "no qemu started"
            time.sleep(0.2)
        time.sleep(3)  # mid-boot
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        deadline = time.monotonic() + 20
        while (qemus_mentioning(str(workroot)) or list((workroot / "verify").iterdir())) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert qemus_mentioning(str(workroot)) == []
        assert list((workroot / "verify").iterdir()) == [], "the overlay was not removed"
        assert server.poll() is None, "the service died with its client"
    finally:
        server.terminate()
        server.wait(timeout=30)
