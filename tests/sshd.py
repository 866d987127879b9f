"""A private sshd for the tests: 127.0.0.1 on a free port, its own host key, and a fresh client key
in its own authorized_keys, so tests log in as root without touching the machine's ssh setup.

sshd needs root (it switches users), its absolute path, and /run/sshd (its privilege separation
directory). It runs in the foreground as a child, and is stopped when the block ends."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.processes import stop

SSHD = Path("/usr/sbin/sshd")


@dataclass(frozen=True)
class Sshd:
    port: int
    key: Path  # private key authorized for root
    wrong_key: Path  # a key sshd does not know
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def usable() -> str:
    """"" when a private sshd can run here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "sshd needs root"
    if not SSHD.exists():
        return f"{SSHD} missing: `make deps` installs openssh-server"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "v2v-test", "-f", str(path)], check=True)


def _answers(port: int) -> bool:
    """sshd's banner on the port: listening, and the one we started (not a stale listener)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@contextmanager
def running_sshd(directory: Path, timeout: float = 30) -> Iterator[Sshd]:
    """An sshd listening on 127.0.0.1:PORT inside the block; its files live in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_key, key, wrong = directory / "host_ed25519", directory / "id_ed25519", directory / "wrong_ed25519"
    for k in (host_key, key, wrong):
        _keygen(k)
    authorized = directory / "authorized_keys"
    authorized.write_text((directory / "id_ed25519.pub").read_text())
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile none
AuthorizedKeysFile {authorized}
# the tests' temporary directories are not what StrictModes wants to see
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
# enabled so that a wrong password is refused the way a real host refuses it
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
# nbdkit's ssh plugin reads the disks over sftp
Subsystem sftp internal-sftp
LogLevel VERBOSE
""")
    log = directory / "sshd.log"
    with open(log, "ab") as logf:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=logf, start_new_session=True)
    server = Sshd(port, key, wrong, log)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sshd did not come up (exit status {proc.poll()}):\n{server.log_text()[-2000:]}")
            time.sleep(0.1)
        yield server
    finally:
        stop(proc)
