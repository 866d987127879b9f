"""Shared fixtures: the test guests (built once, cached by the shared scripts), a CLI runner,
and leak checks for the processes and sockets v2v starts."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from v2v.workdir import WorkDir

REPO = Path(__file__).resolve().parent.parent
GUESTS = Path(os.environ.get("V2V_SHARED", REPO.parent / "shared")) / "guests"
GUEST_DIR = Path(os.environ.get("V2V_TEST_GUESTS", "/var/tmp/guests"))
V2V = Path(sys.executable).parent / "v2v"
CHILDREN = ("nbdkit", "qemu-nbd", "nbdcopy")

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no transport chatter in test output


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def children_mentioning(text: str) -> list[str]:
    """Running nbdkit/qemu-nbd/nbdcopy processes whose command line mentions `text`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and os.path.basename(args[0].decode(errors="replace")) in CHILDREN and \
                text.encode() in b" ".join(args):
            found.append(f"{pid}: {b' '.join(args).decode(errors='replace')}")
    return found


def sockets_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_socket()] if root.exists() else []


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str


@pytest.fixture
def workroot() -> Iterator[Path]:
    """A private V2V_WORKDIR_ROOT; after the test, no process or socket of it may remain.
    Not under tmp_path: its long names would overflow the 107 bytes of a socket path."""
    root = Path(tempfile.mkdtemp(prefix="v2v-t.", dir="/tmp"))
    yield root
    try:
        assert children_mentioning(str(root)) == [], "processes left behind"
        assert sockets_under(root) == [], "sockets left behind"
    finally:
        shutil.rmtree(root)


@pytest.fixture
def workdir(workroot: Path) -> WorkDir:
    return WorkDir.create("guest", workroot)


@pytest.fixture
def v2v(workroot: Path):
    """Runs the v2v CLI (embedded services) with work directories under `workroot`."""

    def run(*args: str, timeout: float = 900) -> Run:
        env = dict(os.environ, V2V_WORKDIR_ROOT=str(workroot), COLUMNS="120")
        p = subprocess.run([str(V2V), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)
        return Run(p.returncode, p.stdout, p.stderr)

    return run


@pytest.fixture(scope="session")
def phony(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fast synthetic guests of ../shared/guests (seconds; no LVM variant), private to this
    run: the script rewrites its images, which would pull them from under a concurrent run."""
    out = tmp_path_factory.mktemp("phony")
    res = subprocess.run([str(GUESTS / "make-phony-guests.sh"), "-L", "-o", str(out)], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, f"make-phony-guests.sh failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}"
    return out


@pytest.fixture(scope="session")
def real_guest() -> Path:
    """The real bootable VMware-looking Debian 12 guest (~4 min the first time, then cached)."""
    out = GUEST_DIR / "linux"
    subprocess.run([str(GUESTS / "make-linux-guest.sh"), "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out / "debian12-vmware.raw"
