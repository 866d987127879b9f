"""Matrix item 9: a guest whose root is on LUKS. Without a key it is refused with a line that says
the disk is encrypted and how to give the key (it used to say "no operating system was found");
with --key DEVICE:file:FILE it converts; a wrong key is one line naming the device. The key never
reaches an argv, the output, an event or a file, with libguestfs tracing on (-x)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import guestfs
import pytest

from tests.conftest import V2V, sha256
from tests.reliability.test_secrets import files_holding, run_watching_argv

pytestmark = pytest.mark.appliance

KEY = "luks-passphrase-4f1c9a"
WRONG = "not-the-passphrase-77e2"


@pytest.fixture(scope="module")
def luks_guest(phony: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phony Debian guest's root filesystem on a LUKS partition (sda1), with the fstab and
    crypttab such a guest has (UUIDs: inspection finds the root inside the opened device)."""
    out = tmp_path_factory.mktemp("luks")
    image = out / "luks.img"
    with open(image, "wb") as f:
        f.truncate(512 * 1024 * 1024)
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(image), format="raw")
    g.add_drive_opts(str(phony / "debian-single.img"), format="raw", readonly=True)
    g.launch()
    try:
        g.part_disk("/dev/sda", "mbr")
        g.luks_format("/dev/sda1", KEY, 0)
        g.cryptsetup_open("/dev/sda1", KEY, "cryptroot")
        g.copy_device_to_device("/dev/sdb1", "/dev/mapper/cryptroot")
        g.mount("/dev/mapper/cryptroot", "/")
        g.write("/etc/fstab", f"UUID={g.vfs_uuid('/dev/mapper/cryptroot')} / ext4 errors=remount-ro 0 1\n")
        g.write("/etc/crypttab", f"cryptroot UUID={g.luks_uuid('/dev/sda1')} none luks\n")
        g.umount_all()
        g.cryptsetup_close("/dev/mapper/cryptroot")
    finally:
        g.shutdown()
        g.close()
    return image


def key_file(directory: Path, key: str) -> Path:
    path = directory / "sda1.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def run(workroot: Path, *args: str | Path) -> tuple[str, list[str]]:
    """Runs v2v with libguestfs' tracing and debug messages on (-x -v: every call and its arguments
    go to the logs); returns its output and every argv seen meanwhile."""
    cmd = [str(V2V), *map(str, args), "--accel", "tcg", "-x", "-v"]
    res, argvs = run_watching_argv(cmd, env={**os.environ, "V2V_WORKDIR_ROOT": str(workroot)})
    return f"rc={res.returncode}\n{res.stdout}{res.stderr}", argvs


def convert(luks_guest: Path, out: Path, workroot: Path, *extra: str) -> tuple[str, list[str]]:
    out.mkdir()
    return run(workroot, "-i", "disk", luks_guest, "-o", "local", "-os", out, "--machine-readable", *extra)


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("v2v: error:")]


def test_without_a_key_the_encrypted_disk_is_named(luks_guest: Path, workroot: Path, tmp_path: Path) -> None:
    before = sha256(luks_guest)
    output, _ = convert(luks_guest, tmp_path / "out", workroot)
    assert output.startswith("rc=1"), output
    assert errors(output) == ["v2v: error: guest luks: step convert: /dev/sda1 is encrypted (LUKS) and no operating "
                              "system was found outside: give the key in a file with --key /dev/sda1:file:FILE "
                              "(or --key all:file:FILE for every encrypted device)"], output
    assert sha256(luks_guest) == before


def test_a_wrong_key_is_one_line_and_is_nowhere(luks_guest: Path, workroot: Path, tmp_path: Path) -> None:
    wrong = key_file(tmp_path, WRONG)
    output, argvs = convert(luks_guest, tmp_path / "out", workroot, "--key", f"all:file:{wrong}")
    assert output.startswith("rc=1"), output
    assert errors(output) == ["v2v: error: guest luks: step convert: /dev/sda1 is encrypted (LUKS) and the key "
                              "given for it (--key all:file:...) does not open it"], output
    assert WRONG not in output and not any(WRONG in a for a in argvs)
    kept = [p for p in workroot.rglob("*.log")]
    assert kept, "a failed conversion keeps its logs"
    assert files_holding(workroot, WRONG) == [] and files_holding(tmp_path / "out", WRONG) == []


def test_the_key_in_a_file_opens_the_root_and_is_nowhere(luks_guest: Path, workroot: Path, tmp_path: Path) -> None:
    """`v2v inspect` (the phony guest has no initramfs tools to convert with; the conversion opens
    the devices in the same inspect step)."""
    before = sha256(luks_guest)
    key = key_file(tmp_path, KEY)
    report = tmp_path / "report.json"
    output, argvs = run(workroot, "inspect", "-i", "disk", luks_guest, "--key", f"/dev/sda1:file:{key}", "-O", report)
    assert output.startswith("rc=0"), output
    inspection = json.loads(report.read_text())["inspection"]
    assert (inspection["root"], inspection["distro"]) == ("/dev/mapper/luks0", "debian"), inspection
    assert inspection["mountpoints"] == {"/": "/dev/mapper/luks0"}, inspection
    assert KEY not in output and not any(KEY in a for a in argvs)
    assert files_holding(workroot, KEY) == [] and files_holding(tmp_path, KEY) == [key]
    assert sha256(luks_guest) == before
