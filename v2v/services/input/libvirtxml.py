"""-i libvirtxml: a libvirt domain XML file. The metadata comes from the XML (domainxml); disks
that are files or block devices are served like -i disk, nbd network disks through nbdkit's nbd
plugin (qemu-nbd for a non-raw format), always behind an overlay, so not even a remote source is
ever written."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

from v2v.errors import V2VError
from v2v.plugins import InputArgs, InputCli
from v2v.services.input.base import INPUTS, InPlaceInput, absolute
from v2v.services.input.diskfile import FORMATS, check_raw_looks_like_disk, image_info, probe, probe_nbd, serve_all
from v2v.services.input.domainxml import DiskRef, parse_domain
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir


def _read(path: Path) -> bytes:
    if not path.exists():
        raise V2VError(f"{path}: no such file", pb.ERROR_CODE_BAD_INPUT)
    if path.is_dir():
        raise V2VError(f"{path}: is a directory, not a libvirt domain XML", pb.ERROR_CODE_BAD_INPUT)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise V2VError(f"{path}: cannot read it ({exc.strerror})", pb.ERROR_CODE_BAD_INPUT) from None


def _resolve(base: Path, path: str) -> Path:
    """libvirt wants absolute paths; a relative one means relative to the XML, as for an OVF."""
    return Path(os.path.normpath(base / path))


def _probe_file(base: Path, ref: DiskRef) -> pb.SourceDisk:
    path = _resolve(base, ref.path)
    if ref.kind == "block" and path.is_block_device():
        # probe's checks are for files: a block device's st_size is 0.
        if not os.access(path, os.R_OK):
            raise V2VError(f"{path}: cannot read it (permission denied)", pb.ERROR_CODE_BAD_INPUT)
        fmt, size = image_info(path, ref.format)
        if fmt == "raw" and not ref.format:
            check_raw_looks_like_disk(path)
        return pb.SourceDisk(location=str(path), format=fmt, virtual_size=size)
    return probe(path, ref.format)


def _describe(base: Path, ref: DiskRef) -> pb.SourceDisk:
    """The disk, checked, before anything serves it."""
    if ref.format and ref.format not in FORMATS:
        raise V2VError(f"<driver type={ref.format!r}> is not a disk format v2v reads "
                       f"(known: {', '.join(FORMATS)})", pb.ERROR_CODE_BAD_INPUT)
    if ref.nbd is None:
        disk = _probe_file(base, ref)
    else:
        socket = str(_resolve(base, ref.nbd.socket)) if ref.nbd.socket else ""
        try:
            disk = probe_nbd(ref.nbd.uri(socket), ref.format)
        except V2VError as err:
            if err.code == pb.ERROR_CODE_CANCELLED:
                raise  # the Open was cancelled: the source did nothing wrong
            raise V2VError(f"cannot reach the nbd source: {err.message}", pb.ERROR_CODE_BAD_INPUT) from None
    disk.index = ref.index
    disk.controller = ref.controller
    return disk


def open_domain_xml(data: bytes, where: str, base: Path, workdir: WorkDir, stack: ExitStack,
                    in_place: bool = False) -> pb.Source:
    """The guest of a domain XML (`where` names it in messages; relative disk paths are relative to
    `base`), each disk served on its in socket behind an overlay (none when `in_place`)."""
    domain = parse_domain(data, where)
    source = domain.source
    # Every disk is checked before any server starts: a bad second disk costs no process.
    for ref in domain.disks:
        try:
            source.disks.append(_describe(base, ref))
        except V2VError as err:
            err.message = f"{where}: {err.message}"
            err.fill(disk=ref.index)
            raise
    serve_all(source.disks, workdir, stack, in_place)
    return source


def _from_cli(a: InputArgs) -> input_pb2.LibvirtXmlInput:
    return input_pb2.LibvirtXmlInput(path=absolute(a.one()))


@INPUTS.register("libvirtxml")
class LibvirtXmlInput(InPlaceInput[input_pb2.LibvirtXmlInput]):
    cli = InputCli("libvirtxml", _from_cli, files="a libvirt domain XML file")

    def location(self, options: input_pb2.LibvirtXmlInput) -> str:
        return options.path

    def open_disks(self, options: input_pb2.LibvirtXmlInput, workdir: WorkDir, stack: ExitStack,
                   in_place: bool) -> pb.Source:
        if not options.path:
            raise V2VError("-i libvirtxml: no domain XML file given", pb.ERROR_CODE_BAD_INPUT)
        xml = Path(options.path).absolute()
        return open_domain_xml(_read(xml), str(xml), xml.parent, workdir, stack, in_place)
