"""A libvirtd answering at qemu:///system for the tests, and throwaway storage pools in it.

These machines have no systemd (nor socket activation): when nothing answers, the daemons are
started here as children, in the foreground so their pids are known, and stopped afterwards.
A daemon that was already running is used as it is and left running."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.locks import locked
from tests.processes import stop

SYSTEM_URI = "qemu:///system"
# virtlogd writes the guests' console and qemu logs: qemu:///system cannot start a guest without it.
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")


def virsh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["virsh", "-q", "-c", SYSTEM_URI, *args], capture_output=True, text=True, timeout=timeout,
                         check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def answers() -> bool:
    try:
        return virsh("version", check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True



# Two locks let several test processes (xdist workers, concurrent runs) share one libvirtd: STARTING
# makes "is one answering? else start one" a single step, and every user holds IN_USE shared, so the
# process that started the daemon stops it only when no one else is using it.
STARTING = Path(tempfile.gettempdir()) / "v2v-test-libvirtd.starting.lock"
IN_USE = Path(tempfile.gettempdir()) / "v2v-test-libvirtd.in-use.lock"


@contextmanager
def running_libvirtd(logdir: Path, timeout: float = 60) -> Iterator[None]:
    """qemu:///system answers inside the block. Daemons started here log to `logdir`."""
    with ExitStack() as stack:
        with locked(STARTING):
            exclusive = stack.enter_context(locked(IN_USE, shared=True))
            started = not answers() and stack.enter_context(_started_libvirtd(logdir, timeout))
        yield
        if started:
            exclusive()  # the other users (a concurrent worker) are done before the daemon stops


@contextmanager
def _started_libvirtd(logdir: Path, timeout: float) -> Iterator[bool]:
    missing = [d for d in ("libvirtd", "virtlogd") if shutil.which(d) is None]
    assert not missing, f"{', '.join(missing)} not installed: `make deps` installs libvirt-daemon-system"
    started: list[subprocess.Popen[bytes]] = []
    try:
        daemons = ["libvirtd"] if _listening(VIRTLOGD_SOCKET) else ["virtlogd", "libvirtd"]
        for daemon in daemons:
            with open(logdir / f"{daemon}.log", "ab") as log:
                started.append(subprocess.Popen([daemon], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                start_new_session=True))
        deadline = time.monotonic() + timeout
        while not answers():
            exited = [f"{p.args[0]} exited {p.returncode}" for p in started if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                logs = "\n".join((logdir / f"{d}.log").read_text(errors="replace")[-2000:] for d in daemons)
                raise AssertionError(f"libvirtd did not come up ({', '.join(exited) or 'timeout'}):\n{logs}")
            time.sleep(0.5)
        yield True
    finally:
        for proc in reversed(started):  # libvirtd before the virtlogd it talks to
            stop(proc, timeout=30)


@contextmanager
def dir_pool(name: str) -> Iterator[Path]:
    """An active storage pool of type dir named `name`, in a new directory, gone afterwards. Under
    /var/tmp and world-readable: qemu runs as libvirt-qemu and must reach the guests' disks."""
    directory = Path(tempfile.mkdtemp(prefix="v2v-pool.", dir="/var/tmp"))
    os.chmod(directory, 0o755)
    try:
        virsh("pool-define-as", name, "dir", "--target", str(directory))
        try:
            virsh("pool-start", name)
            yield directory
        finally:
            virsh("pool-destroy", name, check=False)
            virsh("pool-undefine", name, check=False)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def remove_domain(name: str) -> None:
    """Stops and undefines a test domain if it exists (what a failed test may leave)."""
    if virsh("domstate", name, check=False).returncode == 0:
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--nvram", check=False)
