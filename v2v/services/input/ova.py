"""-i ova: an OVA (a tar of an .ovf, an optional .mf manifest and the disk files), or a directory
holding those files unpacked (or the path of the .ovf in it).

Disks are served from inside the tar where they lie, never unpacked, as virt-v2v does: a member's
byte range goes to nbdkit's offset filter (raw data) or under qemu's raw driver with offset/size
(vmdk, qcow2, ...), each behind a copy-on-write overlay. Only what a format forces is unpacked
into the work directory: gzip-compressed disks, and images that name other files (VMDK
descriptors with separate extents, snapshot deltas, qcow2 backing files), since qemu finds those
by file name, which a byte range in a tar does not have."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import struct
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from v2v.errors import V2VError
from v2v.naming import name_from_path
from v2v.nbdserver import Nbdkit, NbdServer, QemuNbd
from v2v.plugins import InputArgs, InputCli
from v2v.process import run
from v2v.services.input.base import INPUTS, InputPlugin, absolute
from v2v.services.input.diskfile import image_info, serve_overlay
from v2v.services.input.ovf import OvfFile, parse_ovf, safe_relative
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

CHUNK = 1 << 20
MAX_OVF = 16 << 20  # a descriptor of a hundred disks is a few hundred KiB
MAX_MANIFEST = 1 << 20
UNPACK_DIR = "ova"  # under the work directory: what a format forced out of the tar

# What compressed archives start with: v2v reads an OVA only as a plain tar.
_COMPRESSED = {b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz", b"BZh": "bzip2", b"PK\x03\x04": "zip",
               b"\x28\xb5\x2f\xfd": "zstd"}
_MANIFEST_LINE = re.compile(r"(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)")


def bad(msg: str) -> V2VError:
    return V2VError(msg, pb.ERROR_CODE_BAD_INPUT)


# ---------------------------------------------------------------- the files of an OVA


@dataclass(frozen=True)
class Member:
    """One file of the OVA and where its bytes are: a range of the .ova, or a whole file."""
    name: str  # relative path inside the OVA
    file: Path
    offset: int
    size: int

    def read(self, start: int = 0, length: int = -1) -> bytes:
        length = self.size - start if length < 0 else min(length, self.size - start)
        if length <= 0:
            return b""
        with open(self.file, "rb") as f:
            f.seek(self.offset + start)
            return f.read(length)

    def chunks(self) -> Iterator[bytes]:
        with open(self.file, "rb") as f:
            f.seek(self.offset)
            left = self.size
            while left > 0 and (data := f.read(min(CHUNK, left))):
                left -= len(data)
                yield data

    def stream(self) -> io.BufferedReader:
        return io.BufferedReader(_Slice(self), CHUNK)


class _Slice(io.RawIOBase):
    """A member as a file object that ends where the member ends (gzip must not read the tar's
    padding after it as another gzip stream)."""

    def __init__(self, member: Member) -> None:
        self._f = open(member.file, "rb")
        self._f.seek(member.offset)
        self._left = member.size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview | bytearray) -> int:  # type: ignore[override]
        n = self._f.readinto(memoryview(buf)[:min(len(buf), self._left)])
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


@dataclass
class Package:
    """The OVA as a set of members, whichever its form."""
    path: Path  # what the user named: the .ova or the directory
    in_tar: bool
    members: dict[str, Member]
    unusable: dict[str, str]  # tar members that are not plain files, and why
    ovf_hint: str = ""  # the .ovf the user named, when they named one
    folder: Path | None = None  # directory form: members below the top level are looked up on demand

    def get(self, name: str, needed_by: str) -> Member:
        if name in self.unusable:
            raise bad(f"{self.path}: {name} (needed by {needed_by}) is {self.unusable[name]}, not a plain file")
        member = self.members.get(name)
        if member is None and self.folder is not None and (self.folder / name).is_file():
            member = Member(name, self.folder / name, 0, (self.folder / name).stat().st_size)
        if member is None:
            raise bad(f"{self.path}: {needed_by} names {name!r}, which is not in the OVA")
        return member


def _tar_package(path: Path) -> Package:
    try:
        with tarfile.open(path, "r:") as tar:
            infos = tar.getmembers()
    except (tarfile.TarError, EOFError) as exc:
        if "unexpected end of data" in str(exc):
            raise bad(f"{path}: truncated: the tar ends inside a member") from None
        with open(path, "rb") as f:
            head = f.read(8)
        for magic, kind in _COMPRESSED.items():
            if head.startswith(magic):
                raise bad(f"{path}: a {kind}-compressed archive; an OVA is a plain tar (uncompress it first)") \
                    from None
        raise bad(f"{path}: not a tar archive, so not an OVA ({exc})") from None
    file_size = path.stat().st_size
    members: dict[str, Member] = {}
    unusable: dict[str, str] = {}
    for info in infos:
        name = safe_relative(info.name, f"{path}: not a safe OVA", "member name")
        if info.isdir():
            continue
        if not info.isreg():
            unusable[name] = "a link or special file"
        elif info.sparse is not None:  # GNU sparse: its data is not one contiguous range
            unusable[name] = "a GNU sparse member"
        elif info.offset_data + info.size > file_size:
            raise bad(f"{path}: truncated: {name} ends past the end of the file")
        else:
            members[name] = Member(name, path, info.offset_data, info.size)
            unusable.pop(name, None)
    return Package(path, True, members, unusable)


def _dir_package(path: Path, ovf_hint: str = "") -> Package:
    """The files at the top of the directory: the .ovf and .mf are there, as in an unpacked OVA."""
    members = {f.name: Member(f.name, f, 0, f.stat().st_size) for f in path.iterdir() if f.is_file()}
    return Package(path, False, members, {}, ovf_hint, folder=path)


def open_package(path: Path) -> Package:
    if not path.exists():
        raise bad(f"{path}: no such file or directory")
    if not os.access(path, os.R_OK):
        raise bad(f"{path}: cannot read it (permission denied)")
    if path.is_dir():
        return _dir_package(path)
    if path.suffix.lower() == ".ovf":
        return _dir_package(path.parent, path.name)
    if path.stat().st_size == 0:
        raise bad(f"{path}: is empty (0 bytes), not an OVA")
    return _tar_package(path)


def find_ovf(pkg: Package) -> Member:
    ovfs = [pkg.ovf_hint] if pkg.ovf_hint else sorted(n for n in pkg.members if n.lower().endswith(".ovf"))
    if not ovfs:
        raise bad(f"{pkg.path}: no .ovf descriptor in it, so not an OVA")
    if len(ovfs) > 1:
        raise V2VError(f"{pkg.path}: holds several .ovf descriptors ({', '.join(ovfs)}); v2v converts one "
                       "at a time", pb.ERROR_CODE_UNSUPPORTED)
    member = pkg.members[ovfs[0]]
    if member.size > MAX_OVF:
        raise bad(f"{pkg.path}: {member.name} is {member.size} bytes, too big for an OVF descriptor")
    return member


def relative_to(member_name: str, ref: str, where: str) -> str:
    """A file name written inside a member, as a member name (relative to that member's folder)."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(member_name), safe_relative(ref, where, "file name")))


# ---------------------------------------------------------------- the manifest


def verify_manifests(pkg: Package, ovf: Member) -> None:
    """The SHA1/SHA256/SHA512 lines of every .mf beside the .ovf must match the files they name."""
    folder = posixpath.dirname(ovf.name)
    for name in sorted(n for n in pkg.members if n.lower().endswith(".mf") and posixpath.dirname(n) == folder):
        mf = pkg.members[name]
        where = f"{pkg.path}: {mf.name}" if pkg.in_tar else str(mf.file)
        if mf.size > MAX_MANIFEST:
            raise bad(f"{where}: {mf.size} bytes, too big for a manifest")
        for n, line in enumerate(mf.read().decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            m = _MANIFEST_LINE.fullmatch(line.strip())
            if not m:
                raise bad(f"{where}: line {n} is not 'SHA256(file)= hex' (-io ova-checksums=off skips the check)")
            algo, target, want = m[1], relative_to(mf.name, m[2], where), m[3].lower()
            got = hashlib.new(algo.lower())
            for chunk in pkg.get(target, mf.name).chunks():
                got.update(chunk)
            if got.hexdigest() != want:
                raise bad(f"{pkg.path}: {target}: {algo} checksum mismatch (the manifest says {want[:16]}..., the "
                          f"file has {got.hexdigest()[:16]}...); -io ova-checksums=off skips the check")


# ---------------------------------------------------------------- what an image refers to


@dataclass
class Vmdk:
    """The parts of a VMDK descriptor that name other files."""
    extents: list[tuple[str, int, str, int]]  # (type, sectors, file, offset in sectors)
    parent: str


def parse_vmdk_descriptor(text: str) -> Vmdk:
    extents = []
    parent = ""
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r'(?:RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?', line)
        if m:
            extents.append((m[2].upper(), int(m[1]), m[3] or "", int(m[4] or 0)))
        elif m := re.match(r'parentFileNameHint\s*=\s*"([^"]*)"', line):
            parent = m[1]
    return Vmdk(extents, parent)


def vmdk_descriptor(member: Member) -> tuple[Vmdk, bool] | None:
    """(descriptor, is a separate text file) of a VMDK member; None when it is not a VMDK."""
    head = member.read(0, 1024)
    if head.startswith(b"# Disk DescriptorFile"):
        return parse_vmdk_descriptor(member.read(0, 1 << 16).decode("utf-8", "replace")), True
    if head.startswith(b"KDMV") and len(head) >= 44:
        # Hosted sparse extent header: the embedded descriptor's sector offset and length.
        offset, length = struct.unpack_from("<QQ", head, 28)
        text = member.read(offset * 512, min(length * 512, 1 << 20)).split(b"\0", 1)[0]
        return parse_vmdk_descriptor(text.decode("utf-8", "replace")), False
    return None


def referenced_files(member: Member) -> list[str]:
    """Other files an image needs, as written in it: VMDK extents and parent, qcow2 backing file."""
    vmdk = vmdk_descriptor(member)
    if vmdk is not None:
        desc, separate = vmdk
        refs = [e[2] for e in desc.extents if e[2]] if separate else []
        return refs + ([desc.parent] if desc.parent else [])
    head = member.read(0, 24)
    if head.startswith(b"QFI\xfb") and len(head) >= 20:
        offset, length = struct.unpack_from(">QI", head, 8)
        if offset:
            return [member.read(offset, min(length, 4096)).decode("utf-8", "replace")]
    return []


def single_flat_extent(member: Member) -> tuple[str, int] | None:
    """(extent file, size) when a VMDK descriptor is plain raw data in one other file (ESXi's vmfs
    and monolithicFlat): that file can then be served as raw, straight from the tar."""
    vmdk = vmdk_descriptor(member)
    if vmdk is None or not vmdk[1] or vmdk[0].parent or len(vmdk[0].extents) != 1:
        return None
    kind, sectors, fname, offset = vmdk[0].extents[0]
    return (fname, sectors * 512) if kind in ("FLAT", "VMFS") and fname and offset == 0 else None


# ---------------------------------------------------------------- unpacking, when the format forces it


def _write_sparse(chunks: Iterator[bytes], dest: Path) -> None:
    """Writes the data leaving holes for zero blocks: unpacked disks are mostly empty."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        for chunk in chunks:
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
        out.truncate()


def gunzip(member: Member, dest: Path, where: str) -> None:
    # gzip has no random access, so a compressed disk cannot be served from a byte range: the
    # format forces unpacking it whole.
    def chunks() -> Iterator[bytes]:
        with member.stream() as raw, gzip.GzipFile(fileobj=raw) as gz:
            while data := gz.read(CHUNK):
                yield data

    try:
        _write_sparse(chunks(), dest)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        dest.unlink(missing_ok=True)
        raise bad(f"{where}: not valid gzip data ({exc or type(exc).__name__})") from None
    except OSError as exc:
        dest.unlink(missing_ok=True)
        raise cannot_unpack(exc, dest, where) from None


def cannot_unpack(exc: OSError, dest: Path, where: str) -> V2VError:
    return V2VError(f"{where}: cannot unpack it into {dest.parent}: {exc.strerror}",
                    pb.ERROR_CODE_NO_SPACE if exc.errno == errno.ENOSPC else pb.ERROR_CODE_INTERNAL)


def unpack_with_references(pkg: Package, name: str, dest: Path) -> Path:
    """Copies a member and every file it names (recursively) to `dest`, keeping their relative
    layout so qemu finds them by name. Returns the copy of `name`."""
    todo, done = [name], set()
    while todo:
        current = todo.pop()
        if current in done:
            continue
        done.add(current)
        member = pkg.get(current, name)
        where = f"{pkg.path}: {current}"
        try:
            _write_sparse(member.chunks(), dest / current)
        except OSError as exc:
            raise cannot_unpack(exc, dest / current, where) from None
        todo += [relative_to(current, ref, where) for ref in referenced_files(member)]
    return dest / name


# ---------------------------------------------------------------- serving


@dataclass
class Plan:
    """How one disk will be served; decided (and anything unpacked) before any server starts."""
    disk: pb.SourceDisk
    server: Literal["range-raw", "range-image", "file"]
    member: Member | None = None  # range-*: the bytes to serve
    file: Path | None = None  # file: what to serve


def range_spec(member: Member, fmt: str = "") -> str:
    """A qemu json: filename for the member's bytes (probing the format when `fmt` is empty)."""
    spec: dict[str, object] = {"file": {"driver": "raw", "offset": member.offset, "size": member.size,
                                        "file": {"driver": "file", "filename": str(member.file)}}}
    if fmt:
        spec["driver"] = fmt
    return "json:" + json.dumps(spec)


def range_info(member: Member, where: str) -> tuple[str, int]:
    try:
        out = run(["qemu-img", "info", "--output=json", "-U", range_spec(member)],
                  f"{where}: cannot read the disk image", timeout=60)
    except V2VError as err:
        err.code = pb.ERROR_CODE_BAD_INPUT
        raise
    info = json.loads(out)
    return info["format"], int(info["virtual-size"])


def check_format(declared: str, detected: str, where: str) -> None:
    # A raw disk whose guest wrote an image header into it would be probed as that format: the
    # OVF's word is the check against it.
    if declared and declared != detected:
        raise bad(f"{where}: the OVF says it is {declared}, but it is {detected}")


def plan_disk(pkg: Package, ovf: Member, f: OvfFile, disk: pb.SourceDisk, unpack: Path) -> Plan:
    name = relative_to(ovf.name, f.href, f"{pkg.path}: {ovf.name}")
    member = pkg.get(name, ovf.name)
    where = f"{pkg.path}/{name}" if pkg.in_tar else str(member.file)
    disk.location = where
    file: Path | None = None
    if f.compression == "gzip":
        file = unpack / f"disk{disk.index}" / posixpath.basename(name).removesuffix(".gz")
        gunzip(member, file, where)
        if referenced_files(Member(name, file, 0, file.stat().st_size)):
            raise V2VError(f"{where}: a compressed image that names other files (extents, a parent or a "
                           "backing file); v2v does not follow those", pb.ERROR_CODE_UNSUPPORTED)
    elif pkg.in_tar and (flat := single_flat_extent(member)):
        extent = pkg.get(relative_to(name, flat[0], where), name)
        if extent.size < flat[1]:
            raise bad(f"{where}: its extent {extent.name} has {extent.size} bytes, not the {flat[1]} it says")
        disk.format, disk.virtual_size = "raw", flat[1]
        return Plan(disk, "range-raw", Member(extent.name, extent.file, extent.offset, flat[1]))
    elif pkg.in_tar and referenced_files(member):
        file = unpack_with_references(pkg, name, unpack / f"disk{disk.index}")
    elif not pkg.in_tar:
        file = member.file
    if file is not None:
        fmt, disk.virtual_size = image_info(file)
        check_format(disk.format, fmt, where)
        disk.format = fmt
        return Plan(disk, "file", file=file)
    fmt, disk.virtual_size = range_info(member, where)
    check_format(disk.format, fmt, where)
    disk.format = fmt
    return Plan(disk, "range-raw" if fmt == "raw" else "range-image", member)


def server_for(plan: Plan, sock: Path, log: Path) -> NbdServer:
    what = f"disk {plan.disk.index} ({plan.disk.location})"
    m = plan.member
    if plan.server == "file":
        assert plan.file is not None
        served = pb.SourceDisk()
        served.CopyFrom(plan.disk)
        served.location = str(plan.file)
        return serve_overlay(served, sock, log)
    assert m is not None
    if plan.server == "range-raw":
        # The cow filter above the offset filter: the file plugin below both only ever reads.
        return Nbdkit(sock, log, what, "file", [f"file={m.file}", f"offset={m.offset}", f"range={m.size}"],
                      filters=["cow", "offset"])
    return QemuNbd(sock, log, what, m.file, plan.disk.format, snapshot=True, image=range_spec(m, plan.disk.format))


def _from_cli(a: InputArgs) -> input_pb2.OvaInput:
    return input_pb2.OvaInput(path=absolute(a.one()), skip_checksums=not a.io.switch("ova-checksums", True))


@INPUTS.register("ova")
class OvaInput(InputPlugin[input_pb2.OvaInput]):
    cli = InputCli("ova", _from_cli, files="an .ova file, or the directory of an unpacked one",
                   io=[("ova-checksums=off", "do not verify the manifest's SHA1/SHA256 sums")])

    def location(self, options: input_pb2.OvaInput) -> str:
        return options.path

    def open(self, options: input_pb2.OvaInput, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
        if not options.path:
            raise bad("-i ova: no OVA file or directory given")
        pkg = open_package(Path(options.path).absolute())
        ovf_member = find_ovf(pkg)
        where = f"{pkg.path}: {ovf_member.name}" if pkg.in_tar else str(ovf_member.file)
        ovf = parse_ovf(ovf_member.read(), where)
        if not options.skip_checksums:
            verify_manifests(pkg, ovf_member)
        source = ovf.source
        source.name = source.name or name_from_path(str(pkg.path))
        source.os_type, source.secure_boot = ovf.os_type, ovf.secure_boot
        unpack = workdir.path / UNPACK_DIR
        stack.callback(shutil.rmtree, unpack, ignore_errors=True)  # after the servers (LIFO)
        plans = [plan_disk(pkg, ovf_member, f, disk, unpack) for f, disk in zip(ovf.files, source.disks, strict=True)]
        for plan in plans:
            i = plan.disk.index
            try:
                stack.enter_context(server_for(plan, workdir.in_sock(i), workdir.log(f"input-disk{i}.log")))
            except V2VError as err:
                err.fill(disk=i)
                raise
        return source
