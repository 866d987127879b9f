"""Outputs that write files into a directory: the disks (DIR/NAME-sda, ... raw or qcow2, each
served on its out socket while it is written) plus description files. -o local, qemu, json and
kubevirt differ only in what they describe: each is a FileOutput with its own `descriptions`."""

from __future__ import annotations

import errno
import os
from abc import abstractmethod
from contextlib import ExitStack
from pathlib import Path

from v2v.drives import device_name, drive_letters, target_bus
from v2v.errors import V2VError
from v2v.nbdserver import Nbdkit, NbdServer, QemuNbd
from v2v.process import run
from v2v.services.output.base import OutputPlugin
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

FORMATS = ("raw", "qcow2")


def output_directory(spec: output_pb2.OutputSpec) -> Path:
    kind = spec.WhichOneof("kind")
    options = getattr(spec, kind)
    if not options.directory:
        raise V2VError(f"-o {kind}: no output directory given (-os)", pb.ERROR_CODE_BAD_INPUT)
    directory = Path(options.directory).absolute()
    if not directory.exists():
        raise V2VError(f"-os {directory}: no such directory", pb.ERROR_CODE_BAD_INPUT)
    if not directory.is_dir():
        raise V2VError(f"-os {directory}: is not a directory", pb.ERROR_CODE_BAD_INPUT)
    if not os.access(directory, os.W_OK | os.X_OK):
        why = "a read-only filesystem" if os.statvfs(directory).f_flag & os.ST_RDONLY else "permission denied"
        raise V2VError(f"-os {directory}: cannot write to it ({why})", pb.ERROR_CODE_BAD_INPUT)
    return directory


def disk_format(spec: output_pb2.OutputSpec) -> str:
    fmt = spec.format or "raw"
    if fmt not in FORMATS:
        raise V2VError(f"-of {fmt}: -o {spec.WhichOneof('kind')} writes {' or '.join(FORMATS)}",
                       pb.ERROR_CODE_BAD_INPUT)
    if spec.compressed and fmt != "qcow2":
        raise V2VError("-oo compressed needs -of qcow2", pb.ERROR_CODE_BAD_INPUT)
    return fmt


# Storage the user named that cannot be written is theirs to fix: BAD_INPUT, not an internal error.
_USER_STORAGE = {errno.EROFS: pb.ERROR_CODE_BAD_INPUT, errno.EACCES: pb.ERROR_CODE_BAD_INPUT,
                 errno.EPERM: pb.ERROR_CODE_BAD_INPUT, errno.ENOSPC: pb.ERROR_CODE_NO_SPACE}


def os_error(what: str, exc: OSError) -> V2VError:
    return V2VError(f"{what}: {exc.strerror}", _USER_STORAGE.get(exc.errno or 0, pb.ERROR_CODE_INTERNAL),
                    detail=str(exc))


def target_exists(paths: list[Path]) -> V2VError:
    return V2VError(f"already exists: {', '.join(map(str, paths))}; remove or choose another name with -on",
                    pb.ERROR_CODE_TARGET_EXISTS)


def refuse_existing(paths: list[Path]) -> None:
    if existing := [p for p in paths if p.exists()]:
        raise target_exists(existing)


def claim(path: Path, overwrite: bool) -> None:
    """Creates the file exclusively (unless asked to overwrite): a file that appeared since the
    check is not ours to overwrite, nor to remove on abort."""
    try:
        path.open("w" if overwrite else "x").close()
    except FileExistsError:
        raise target_exists([path]) from None
    except OSError as exc:
        raise os_error(f"cannot create {path}", exc) from exc


def create_image(path: Path, fmt: str, size: int, preallocated: bool) -> None:
    # falloc reserves the space now (a full disk fails here, not halfway through the copy) and the
    # reserved blocks read as zeros, which the copy relies on (target_is_zero).
    options = ["-o", "preallocation=falloc"] if preallocated else []
    try:
        run(["qemu-img", "create", "-q", "-f", fmt, *options, str(path), str(size)],
            f"cannot create {path}")
    except V2VError as err:
        if os.strerror(errno.ENOSPC) in err.detail:
            err.code = pb.ERROR_CODE_NO_SPACE
        raise


def disk_server(disk: pb.TargetDisk, workdir: WorkDir, compressed: bool = False) -> NbdServer:
    sock = workdir.out_sock(disk.index)
    log = workdir.log(f"output-disk{disk.index}.log")
    what = f"target disk {disk.index} ({disk.path})"
    if disk.format == "raw":
        return Nbdkit(sock, log, what, "file", [f"file={disk.path}"])
    return QemuNbd(sock, log, what, Path(disk.path), disk.format, compressed=compressed)


def create_disks(spec: output_pb2.OutputSpec, target: pb.TargetMeta, paths: list[Path], workdir: WorkDir,
                 stack: ExitStack) -> None:
    """Creates disk N of the source at paths[N] and serves it on workdir.out_sock(N). Each disk is
    in target.disks as soon as its file exists, so that abort removes exactly what was made."""
    fmt = disk_format(spec)
    preallocated = spec.allocation == output_pb2.ALLOCATION_PREALLOCATED
    bus = target_bus(target.caps)
    for source_disk, path in zip(target.source.disks, paths, strict=True):
        disk = pb.TargetDisk(index=source_disk.index, path=str(path), format=fmt, virtual_size=source_disk.virtual_size,
                             device=device_name(bus, source_disk.index), bus=bus)
        try:
            claim(path, spec.overwrite)
            target.disks.append(disk)
            create_image(path, fmt, disk.virtual_size, preallocated)
            stack.enter_context(disk_server(disk, workdir, spec.compressed))
        except V2VError as err:
            err.fill(disk=disk.index)
            raise


def serve_disks(target: pb.TargetMeta, workdir: WorkDir, stack: ExitStack) -> None:
    """Serves the existing disks in target.disks again on workdir.out_sock(N). A qcow2 written
    compressed (-oo compressed) is served plain: qemu's compress filter only writes clusters that
    were never written, and a later round rewrites some."""
    for disk in target.disks:
        try:
            if not Path(disk.path).is_file():
                raise V2VError(f"target disk {disk.index} ({disk.path}) is gone", pb.ERROR_CODE_NOT_FOUND)
            stack.enter_context(disk_server(disk, workdir))
        except V2VError as err:
            err.fill(disk=disk.index)
            raise


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_error(f"cannot write {path}", exc) from exc


class FileOutput(OutputPlugin):
    """Disks as files in the output directory, and description files written at finalize."""

    target_is_zero = True

    @abstractmethod
    def descriptions(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, directory: Path) -> dict[str, str]:
        """File name (in the directory) -> content, written at finalize once the disks hold the data."""

    def description_names(self, target: pb.TargetMeta) -> list[str]:
        """The names `descriptions` will write, checked for at the start. Default: NAME.<ext>."""
        return [f"{target.name}.{self.extension}"]

    extension = ""

    def disk_path(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, directory: Path, index: int) -> Path:
        """Where disk `index` goes: DIR/NAME-sda, DIR/NAME-sdb, ... like virt-v2v."""
        return directory / f"{target.name}-sd{drive_letters(index)}"

    def _paths(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta) -> tuple[Path, list[Path]]:
        directory = output_directory(spec)
        return directory, [self.disk_path(spec, target, directory, d.index) for d in target.source.disks]

    def check(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta) -> None:
        directory, paths = self._paths(spec, target)
        disk_format(spec)
        if not spec.overwrite:
            refuse_existing([*paths, *(directory / n for n in self.description_names(target))])

    def setup(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir,
              stack: ExitStack) -> None:
        self.check(spec, target)
        _, paths = self._paths(spec, target)
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        create_disks(spec, target, paths, workdir, stack)

    def serve(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir, stack: ExitStack) -> None:
        serve_disks(target, workdir, stack)

    def finalize(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir) -> list[str]:
        directory = output_directory(spec)
        written = []
        for name, text in self.descriptions(spec, target, directory).items():
            write_atomically(directory / name, text)
            written.append(str(directory / name))
        return [disk.path for disk in target.disks] + written

    def abort(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir) -> None:
        for disk in target.disks:
            Path(disk.path).unlink(missing_ok=True)
