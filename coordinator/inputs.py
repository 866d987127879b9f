"""The command line's input options (-i, -if, -it, -io, -ip, the files) as the typed InputSpec of
each input. One builder per input type; a new input adds its builder here and its plugin in the
input service."""

from __future__ import annotations

import os
from collections.abc import Callable

from v2v.coordinator.options import Options
from v2v.errors import V2VError
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb


def _one(kind: str, files: list[str]) -> str:
    if len(files) != 1:
        raise V2VError(f"-i {kind} takes one file, not {len(files)}", pb.ERROR_CODE_BAD_INPUT, step="open")
    return files[0]


def _local(path: str) -> str:
    """Absolute, because the services may run with another working directory."""
    return os.path.abspath(path)


def _disk(spec: input_pb2.InputSpec, files: list[str], fmt: str, transport: str, password_file: str,
          io: Options) -> None:
    spec.disk.CopyFrom(input_pb2.DiskInput(paths=[f if "://" in f else _local(f) for f in files], format=fmt))


def _ova(spec: input_pb2.InputSpec, files: list[str], fmt: str, transport: str, password_file: str,
         io: Options) -> None:
    spec.ova.CopyFrom(input_pb2.OvaInput(path=_local(_one("ova", files)),
                                         skip_checksums=not io.switch("ova-checksums", True)))


def _vmx(spec: input_pb2.InputSpec, files: list[str], fmt: str, transport: str, password_file: str,
         io: Options) -> None:
    location = _one("vmx", files)
    if transport == "ssh" and not location.startswith("ssh://"):
        raise V2VError(f"-it ssh: expected ssh://[USER@]HOST[:PORT]/PATH.vmx, not {location}", pb.ERROR_CODE_BAD_INPUT,
                       step="open")
    if transport not in ("", "ssh"):
        raise V2VError(f"-it {transport}: -i vmx knows only ssh", pb.ERROR_CODE_BAD_INPUT, step="open")
    identity = io.value("vmx-identity")
    spec.vmx.CopyFrom(input_pb2.VmxInput(
        location=location if location.startswith("ssh://") else _local(location),
        identity_file=_local(identity) if identity else "",
        password_file=_local(password_file) if password_file else "",
        insecure_host_key=not io.switch("vmx-known-hosts", True)))


def _libvirtxml(spec: input_pb2.InputSpec, files: list[str], fmt: str, transport: str, password_file: str,
                io: Options) -> None:
    spec.libvirtxml.CopyFrom(input_pb2.LibvirtXmlInput(path=_local(_one("libvirtxml", files))))


Builder = Callable[[input_pb2.InputSpec, list[str], str, str, str, Options], None]

BUILDERS: dict[str, Builder] = {"disk": _disk, "ova": _ova, "vmx": _vmx, "libvirtxml": _libvirtxml}


def input_spec(kind: str, files: list[str], fmt: str = "", transport: str = "", password_file: str = "",
               raw_io: list[str] | None = None) -> input_pb2.InputSpec:
    if not files:
        raise V2VError(f"-i {kind}: no input file given", pb.ERROR_CODE_BAD_INPUT, step="open")
    spec = input_pb2.InputSpec()
    io = Options("-io", f"-i {kind}", raw_io or [])
    BUILDERS[kind](spec, files, fmt, transport, password_file, io)
    io.done()
    return spec


def input_location(spec: input_pb2.InputSpec) -> str:
    """The file (or URI) that names the guest before its metadata is read."""
    kind = spec.WhichOneof("kind")
    if kind == "disk":
        return spec.disk.paths[0] if spec.disk.paths else ""
    if kind == "vmx":
        return spec.vmx.location
    return getattr(spec, kind).path if kind else ""
