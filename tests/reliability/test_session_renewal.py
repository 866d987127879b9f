"""Long copies from vSphere (docs/reliability.md): a disk of -i vmx -it https copied (the input and
copier services' own code in this process, nbdkit curl and nbdcopy for real) from the HTTPS
datastore stand-in (tests/https_datastore.py, NOT VMware) whose sessions end SESSION s after their
login and which sends at most RATE bytes/s, so that the copy outlives several sessions. nbdkit's
cookie-script (v2v/services/input/vmware_cookie.py) logs in again every session_renew_seconds: the
copy succeeds and is the source byte for byte, with the password in no process's arguments. A
renewal that comes too late, or whose login is refused, fails the copy at step copy, disk 0, and the
disk's input log says why; nothing is left running."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import child_servers, sha256
from tests.https_datastore import DATACENTER, DATASTORE, running_datastore
from tests.reliability.test_secrets import files_holding, watching_argv
from tests.test_input_vcenter import flat_descriptor
from v2v.errors import V2VError
from v2v.nbdclient import nbd_uri
from v2v.nbdserver import Nbdkit
from v2v.services.copier.service import CopierService
from v2v.services.input.service import InputService
from v2v.services.input.vmware_https import CurlNbdkit, DsFile, Https, fetch_vmx
from v2v.v1 import copier_pb2, input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

MiB = 1 << 20
SIZE = 12 * MiB  # at RATE, a copy of 12 s or more
RATE = MiB
SESSION = 4.0  # seconds a session lasts after its login: three of them end during the copy
RENEW = 1  # seconds: nbdkit renews once a whole second of its clock has passed, so within 2 s
VMX = "long/long.vmx"
FLAT = "long/long-flat.vmdk"


@pytest.fixture(scope="module")
def datastore(tmp_path_factory):
    root = tmp_path_factory.mktemp("datastore")
    (root / "long").mkdir()
    (root / FLAT).write_bytes(hashlib.shake_256(b"v2v long copy").digest(SIZE))
    (root / "long" / "long.vmdk").write_text(flat_descriptor("long-flat.vmdk", SIZE))
    (root / VMX).write_text('displayName = "long"\nscsi0.present = "TRUE"\nscsi0.virtualDev = "pvscsi"\n'
                            'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "long.vmdk"\n')
    with running_datastore(tmp_path_factory.mktemp("https"), root, session_seconds=SESSION, rate=RATE) as ds:
        yield ds


@pytest.fixture
def password_file(datastore, tmp_path) -> Path:
    """The -ip file, a copy of the stand-in's: a test may change it."""
    copy = tmp_path / "password"
    copy.write_text(datastore.password_file.read_text())
    return copy


@pytest.fixture
def opened(datastore, password_file, workroot) -> Iterator[Callable[[int], tuple[WorkDir, input_pb2.OpenResponse]]]:
    """A function opening the guest with a renewal interval; the input is closed after the test."""
    svc = InputService()
    opened: list[WorkDir] = []

    def open_input(renew: int) -> tuple[WorkDir, input_pb2.OpenResponse]:
        wd = WorkDir.create("long", workroot)
        opened.append(wd)
        options = input_pb2.VmwareHttpsInput(url=datastore.url(VMX), password_file=str(password_file), insecure=True,
                                             session_renew_seconds=renew)
        return wd, svc.open(input_pb2.OpenRequest(workdir=wd.name, guest="long",
                                                  input=input_pb2.InputSpec(vmware_https=options)))

    yield open_input
    for wd in opened:
        svc.close(wd.name)
    assert child_servers() == []


def copy(sock: str, tmp_path: Path) -> Path:
    """The disk on `sock` copied by the copier service into a raw file; raises the copy's error."""
    out = tmp_path / "copy.raw"
    out.write_bytes(b"")
    os.truncate(out, SIZE)
    with Nbdkit(tmp_path / "target.sock", tmp_path / "target.log", "target", "file", [f"file={out}"]) as target:
        for _ in CopierService().copy(copier_pb2.CopyRequest(
                guest="long", options=copier_pb2.CopyOptions(target_is_zero=True),
                disks=[copier_pb2.DiskCopy(disk=0, source=nbd_uri(Path(sock)), target=target.uri)])):
            pass
    return out


def logins(datastore, before: int) -> list[str]:
    """The logins since request number `before`: basic auth, as nbdkit's cookie-script logs in."""
    return [r for r in datastore.requests()[before:] if " auth=basic " in r]


NBDKIT_LOGIN = f"HEAD /folder/{FLAT}?dcPath={DATACENTER}&dsName={DATASTORE} auth=basic 200"


def nbdkit_error_files() -> set[Path]:
    """Where nbdkit sends each cookie-script's stderr (vmware_cookie.forget_error_file)."""
    return set(Path("/tmp").glob("errors??????"))


def test_a_copy_that_outlives_its_session_renews_it(datastore, opened, password_file, tmp_path):
    password = password_file.read_text().strip()
    error_files = nbdkit_error_files()
    with watching_argv() as argvs:
        wd, resp = opened(RENEW)
        before = len(datastore.requests())
        out = copy(resp.sockets[0], tmp_path)
    assert sha256(out) == sha256(datastore.root / FLAT)
    # a session lasts SESSION s, the copy needs SIZE / RATE: only new sessions carried it through
    assert logins(datastore, before).count(NBDKIT_LOGIN) >= 3
    assert any("cookie-script-renew=1" in argv for argv in argvs)  # the sampler saw nbdkit at work
    assert not any(password in argv for argv in argvs)
    assert files_holding(wd.path, password) == []
    assert nbdkit_error_files() - error_files == set()  # nbdkit alone would leave one a renewal


def test_a_renewal_that_comes_too_late_fails_the_copy(datastore, opened, tmp_path):
    """The same copy, renewing after an hour: the session ends mid-copy and the reads get 401. This
    is what the test above would meet without renewal."""
    wd, resp = opened(3600)
    before = len(datastore.requests())
    with pytest.raises(V2VError) as exc:
        copy(resp.sockets[0], tmp_path)
    err = exc.value
    assert (err.step, err.disk) == ("copy", 0) and "nbdcopy: read at offset" in err.message, err
    assert f"GET /folder/{FLAT}?dcPath={DATACENTER}&dsName={DATASTORE} auth=expired 401" in \
        datastore.requests()[before:]
    log = (wd.path / "logs" / "input-disk0.log").read_text()
    assert "401" in log, log


def test_a_refused_renewal_fails_the_copy_saying_why(datastore, opened, password_file, tmp_path):
    """The password changes once the stand-in has served the copy's first read of the disk: the next
    renewal's login is refused, the copy fails (after the retry filter's five tries: not a hang),
    and the disk's log names the disk and the refusal."""
    wd, resp = opened(RENEW)
    before = len(datastore.requests())
    ended = threading.Event()

    def change_password_once_copying() -> None:
        while not any(r.startswith(f"GET /folder/{FLAT}?") for r in datastore.requests()[before:]):
            if ended.wait(0.05):
                return  # the copy ended first: the assertions below say so
        password_file.write_text("changed-meanwhile\n")

    changer = threading.Thread(target=change_password_once_copying)
    changer.start()
    try:
        with pytest.raises(V2VError) as exc:
            copy(resp.sockets[0], tmp_path)
    finally:
        ended.set()
        changer.join()
    err = exc.value
    assert (err.step, err.disk) == ("copy", 0) and "nbdcopy: read at offset" in err.message, err
    log = (wd.path / "logs" / "input-disk0.log").read_text()
    flat = resp.source.disks[0].location
    assert f"cookie-script failed: cannot renew the datastore session of disk 0 ({flat}) (renewal " in log
    assert f"): {flat}: authentication failed\n" in log, log


def test_a_refused_first_login_fails_the_start_naming_the_disk(datastore, workroot, tmp_path):
    """nbdkit's own first login (its cookie-script's) refused where v2v's worked (the password
    changed in between): the server's start fails at once with the script's line."""
    pw = tmp_path / "password"
    pw.write_text(datastore.password_file.read_text())
    session = Https.from_options(input_pb2.VmwareHttpsInput(url=datastore.url(VMX), password_file=str(pw),
                                                            insecure=True)).session()
    fetch_vmx(session)  # v2v's login
    pw.write_text("changed-meanwhile\n")
    wd = WorkDir.create("long", workroot)
    flat = datastore.url(FLAT)
    what = f"disk 0 ({flat})"
    server = CurlNbdkit(session.server, wd.in_sock(0), wd.log("in0.log"), what,
                        session.curl_args(DsFile(DATASTORE, FLAT), what, RENEW))
    with pytest.raises(V2VError) as exc:
        server.start()
    assert exc.value.code == pb.ERROR_CODE_BAD_INPUT
    assert exc.value.message == f"cannot log in to the datastore for {what}: {flat}: authentication failed"
    assert not server.process.running() and child_servers() == []
