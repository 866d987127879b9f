"""-o local: the disks as DIR/NAME-sda, DIR/NAME-sdb... (raw or qcow2) and DIR/NAME.xml, a libvirt
domain describing the guest."""

from __future__ import annotations

import errno
import os
from contextlib import ExitStack
from pathlib import Path

from v2v.drives import block_bus, device_name, drive_letters
from v2v.errors import V2VError
from v2v.nbdserver import Nbdkit, NbdServer, QemuNbd
from v2v.process import run
from v2v.services.output.base import OUTPUTS, OutputPlugin
from v2v.services.output.libvirtxml import domain_xml
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

FORMATS = ("raw", "qcow2")


def output_directory(options: output_pb2.LocalOutput) -> Path:
    if not options.directory:
        raise V2VError("-o local: no output directory given (-os)", pb.ERROR_CODE_BAD_INPUT)
    directory = Path(options.directory).absolute()
    if not directory.exists():
        raise V2VError(f"-os {directory}: no such directory", pb.ERROR_CODE_BAD_INPUT)
    if not directory.is_dir():
        raise V2VError(f"-os {directory}: is not a directory", pb.ERROR_CODE_BAD_INPUT)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise V2VError(f"-os {directory}: cannot write to it (permission denied)", pb.ERROR_CODE_BAD_INPUT)
    return directory


def disk_format(spec: output_pb2.OutputSpec) -> str:
    fmt = spec.format or "raw"
    if fmt not in FORMATS:
        raise V2VError(f"-of {fmt}: -o local writes {' or '.join(FORMATS)}", pb.ERROR_CODE_BAD_INPUT)
    return fmt


def disk_path(directory: Path, name: str, index: int) -> Path:
    return directory / f"{name}-sd{drive_letters(index)}"


def description_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.xml"


def os_error(what: str, exc: OSError) -> V2VError:
    code = pb.ERROR_CODE_NO_SPACE if exc.errno == errno.ENOSPC else pb.ERROR_CODE_INTERNAL
    return V2VError(f"{what}: {exc.strerror}", code, detail=str(exc))


def target_exists(paths: list[Path]) -> V2VError:
    return V2VError(f"already exists: {', '.join(map(str, paths))}; remove or choose another name with -on",
                    pb.ERROR_CODE_TARGET_EXISTS)


def refuse_existing(paths: list[Path]) -> None:
    if existing := [p for p in paths if p.exists()]:
        raise target_exists(existing)


def claim(path: Path) -> None:
    """Creates the file exclusively: a file that appeared since the check is not ours to overwrite,
    nor to remove on abort."""
    try:
        path.open("x").close()
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


def disk_server(disk: pb.TargetDisk, workdir: WorkDir) -> NbdServer:
    sock = workdir.out_sock(disk.index)
    log = workdir.log(f"output-disk{disk.index}.log")
    what = f"target disk {disk.index} ({disk.path})"
    if disk.format == "raw":
        return Nbdkit(sock, log, what, "file", [f"file={disk.path}"])
    return QemuNbd(sock, log, what, Path(disk.path), disk.format)


@OUTPUTS.register("local")
class LocalOutput(OutputPlugin):
    target_is_zero = True

    def check(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta) -> None:
        directory = output_directory(spec.local)
        disk_format(spec)
        refuse_existing([*(disk_path(directory, target.name, d.index) for d in target.source.disks),
                         description_path(directory, target.name)])

    def setup(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir,
              stack: ExitStack) -> None:
        self.check(spec, target)
        directory = output_directory(spec.local)
        fmt = disk_format(spec)
        preallocated = spec.allocation == output_pb2.ALLOCATION_PREALLOCATED
        bus = block_bus(target.caps)
        paths = [disk_path(directory, target.name, d.index) for d in target.source.disks]
        for source_disk, path in zip(target.source.disks, paths, strict=True):
            disk = pb.TargetDisk(index=source_disk.index, path=str(path), format=fmt,
                                 virtual_size=source_disk.virtual_size,
                                 device=device_name(bus, source_disk.index), bus=bus)
            try:
                claim(path)
                target.disks.append(disk)
                create_image(path, fmt, disk.virtual_size, preallocated)
                stack.enter_context(disk_server(disk, workdir))
            except V2VError as err:
                err.fill(disk=disk.index)
                raise

    def finalize(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir) -> list[str]:
        xml = description_path(output_directory(spec.local), target.name)
        tmp = xml.with_name(xml.name + ".tmp")
        try:
            tmp.write_text(domain_xml(target, list(target.disks)))
            os.replace(tmp, xml)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise os_error(f"cannot write {xml}", exc) from exc
        return [disk.path for disk in target.disks] + [str(xml)]

    def abort(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir) -> None:
        for disk in target.disks:
            Path(disk.path).unlink(missing_ok=True)
