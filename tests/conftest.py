"""Shared fixtures: the test guests (built once, cached by the shared scripts), a CLI runner,
and leak checks for the processes and sockets v2v starts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import json_format

from tests.locks import locked, once_per_run
from v2v.v1 import copier_pb2, input_pb2, output_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

REPO = Path(__file__).resolve().parent.parent
GUESTS = Path(os.environ.get("V2V_SHARED", REPO.parent / "shared")) / "guests"
GUEST_DIR = Path(os.environ.get("V2V_TEST_GUESTS", "/var/tmp/guests"))
V2V = Path(sys.executable).parent / "v2v"
CHILDREN = ("nbdkit", "qemu-nbd", "nbdcopy")

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no transport chatter in test output

pytest_plugins = ["tests.windows_guests"]  # windows_guests, virtio_win, virtio_win_image, virt_tools_dir


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


def child_servers() -> list[str]:
    """nbdkit, qemu-nbd and nbdcopy processes this test process started and has not reaped (other
    children, such as a libvirtd a fixture started, are not ours to judge)."""
    res = subprocess.run(["pgrep", "-a", "-P", str(os.getpid()), "-x", "|".join(CHILDREN)], capture_output=True,
                         text=True, check=False)
    return res.stdout.splitlines()


def write_reads_back(sock: str | Path) -> None:
    """Writes through a served disk and reads it back: what the conversion does to an overlay."""
    import nbd

    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///?socket={sock}")
    h.pwrite(b"\xde\xad" * 2048, 0)
    assert h.pread(4, 0) == b"\xde\xad\xde\xad"
    h.shutdown()


def sockets_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_socket()] if root.exists() else []


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str


# The modules that take minutes, heaviest first (by --durations of a full run). `make test` hands whole
# modules to two xdist workers in collection order (--dist loadfile --no-loadscope-reorder; by default
# xdist orders modules by their number of tests): these go first, and the many light modules fill in
# at the end, instead of one worker converting Windows guests alone after the other is done.
HEAVY_FIRST = ("test_variant_guest", "test_e2e", "test_windows_conversion", "test_e2e_inputs",
               "test_convert_families", "test_fleet", "test_deploy", "test_warm", "test_open_inspect",
               "test_windows_guests", "test_verify", "test_convert_cancel", "test_output_libvirt",
               "test_output_qemu", "test_copy_while_converting")


# Modules that share the session's `converted` conversion go to one worker, one after another: on
# two, the second waited about five minutes, idle, while the first converted it.
SAME_WORKER = {"test_verify": "converted", "test_output_libvirt": "converted", "test_output_qemu": "converted"}


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown (and fine) when xdist is not loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """--dist loadfile with the SAME_WORKER modules as one unit of work (at the place of the first)."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class GroupedFileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return SAME_WORKER.get(Path(module).stem, module)

    return GroupedFileScheduling(config, log)  # type: ignore[arg-type]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(HEAVY_FIRST)))  # stable: a module stays whole


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI ($V2V_SKIP_IS_FAILURE, set by .ci/run) a skipped test fails: a skip there means the clean
    machine lacks something `make test` should have installed, and a green run would hide it."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("V2V_SKIP_IS_FAILURE") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (V2V_SKIP_IS_FAILURE): {report.longrepr}"


@pytest.fixture
def workroot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private V2V_WORKDIR_ROOT, set for the test: services made without a root resolve work
    directory names under it. After the test, no process or socket of it may remain. Not under
    tmp_path: its long names would overflow the 107 bytes of a socket path."""
    root = Path(tempfile.mkdtemp(prefix="v2v-t.", dir="/tmp"))
    monkeypatch.setenv("V2V_WORKDIR_ROOT", str(root))
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


@pytest.fixture
def service() -> Iterator[object]:
    """An output service for the output tests (the copier tests define their own); none of its NBD
    servers may outlive the test."""
    from v2v.services.output.service import OutputService

    svc = OutputService()
    yield svc
    svc.shutdown()
    assert child_servers() == []


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A libvirtd answering at qemu:///system (started for the run if none does)."""
    from tests.libvirtd import running_libvirtd

    with running_libvirtd(tmp_path_factory.mktemp("libvirtd")):
        yield


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
    with locked(GUEST_DIR / "linux.lock"):  # the script does not expect a second one building beside it
        subprocess.run([str(GUESTS / "make-linux-guest.sh"), "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out / "debian12-vmware.raw"


@pytest.fixture(scope="session")
def converted(real_guest: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[pb.TargetMeta, Path]:
    """The real guest converted once per run from its OVA (-i ova) with -o json -of qcow2: (its
    TargetMeta, its disk). Output tests write this target again with their output and boot it, which
    also proves the OVA path end to end, without converting again."""
    def convert(out: Path) -> None:
        root = Path(tempfile.mkdtemp(prefix="v2v-c.", dir="/tmp"))
        env = dict(os.environ, V2V_WORKDIR_ROOT=str(root))
        res = subprocess.run([str(V2V), "-i", "ova", str(real_guest.with_suffix(".ova")), "-o", "json", "-of",
                              "qcow2", "-os", str(out), "--accel", "tcg", "-q"], capture_output=True, text=True,
                             env=env, check=False)
        shutil.rmtree(root)
        assert res.returncode == 0, res.stderr

    out = once_per_run(tmp_path_factory, "converted", convert)
    doc = json.loads((out / "debian12-vmware.json").read_text())
    target = json_format.ParseDict(doc["target"], pb.TargetMeta())
    return target, Path(target.disks[0].path)


def write_target(target: pb.TargetMeta, disks: list[Path], spec: output_pb2.OutputSpec, workroot: Path) -> list[str]:
    """Runs open -> check -> setup -> copy -> finalize in this process (the services' own code, no
    conversion): `disks` (already converted) become the target of `spec`. Returns the files written."""
    from v2v.services.copier.service import CopierService
    from v2v.services.input.service import InputService
    from v2v.services.output.service import OutputService

    inputs, outputs, copier = InputService(), OutputService(), CopierService()
    wd = WorkDir.create(target.name, workroot)
    try:
        opened = inputs.open(input_pb2.OpenRequest(workdir=wd.name, guest=target.name,
                                                   input=input_pb2.InputSpec(disk=input_pb2.DiskInput(
                                                       paths=[str(d) for d in disks]))))
        t = pb.TargetMeta()
        t.CopyFrom(target)
        del t.source.disks[:], t.disks[:]
        t.source.disks.extend(opened.source.disks)  # the same sizes; locations are the converted files now
        outputs.check(output_pb2.CheckRequest(guest=t.name, output=spec, source=t.source))
        setup = outputs.setup(output_pb2.SetupRequest(workdir=wd.name, guest=t.name, output=spec, target=t))
        del t.disks[:]
        t.disks.extend(setup.disks)
        for _ in copier.copy(copier_pb2.CopyRequest(
                workdir=wd.name, guest=t.name, options=copier_pb2.CopyOptions(target_is_zero=True, flush=True),
                disks=[copier_pb2.DiskCopy(disk=i, source=opened.sockets[i], target=setup.sockets[i])
                       for i in range(len(disks))])):
            pass
        return list(outputs.finalize(output_pb2.FinalizeRequest(workdir=wd.name, guest=t.name, output=spec,
                                                                target=t)).files)
    except BaseException:
        outputs.shutdown()
        raise
    finally:
        inputs.close(wd.name)


@contextmanager
def tiny_filesystem(path: Path, size: str = "3M", options: str = "") -> Iterator[Path]:
    """A small tmpfs (`options`: also ro): target storage that fills up in the middle of a copy, or
    that cannot be written."""
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(path)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
