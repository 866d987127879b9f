"""The command line's input options (-i, -ic, -if, -it, -io, -ip, the files) as the typed
InputSpec of each input. One builder per input type; a new input adds its builder here and its
plugin in the input service."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from v2v.cli.options import Options
from v2v.errors import V2VError
from v2v.steps import Step
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb


@dataclass
class InputArgs:
    kind: str  # -i
    files: list[str]  # the positional arguments
    format: str = ""  # -if
    uri: str = ""  # -ic
    transport: str = ""  # -it
    password_file: str = ""  # -ip
    io: Options = field(default_factory=lambda: Options("-io", "", []))  # -io

    def one(self) -> str:
        if len(self.files) != 1:
            raise V2VError(f"-i {self.kind} takes one argument, not {len(self.files)}", pb.ERROR_CODE_BAD_INPUT,
                           step=Step.OPEN)
        return self.files[0]


def _local(path: str) -> str:
    """Absolute, because the services may run with another working directory."""
    return os.path.abspath(path) if path else ""


def _disk(spec: input_pb2.InputSpec, a: InputArgs) -> None:
    spec.disk.CopyFrom(input_pb2.DiskInput(paths=[f if "://" in f else _local(f) for f in a.files], format=a.format))


def _ova(spec: input_pb2.InputSpec, a: InputArgs) -> None:
    spec.ova.CopyFrom(input_pb2.OvaInput(path=_local(a.one()), skip_checksums=not a.io.switch("ova-checksums", True)))


def _vmx(spec: input_pb2.InputSpec, a: InputArgs) -> None:
    location = a.one()
    if a.transport in _VMX_TRANSPORTS or (not a.transport and location.startswith("https://")):
        _VMX_TRANSPORTS[a.transport or "https"](spec, a)
        return
    if a.transport not in ("", "ssh"):
        raise V2VError(f"-it {a.transport}: -i vmx knows ssh, {', '.join(_VMX_TRANSPORTS)}", pb.ERROR_CODE_BAD_INPUT,
                       step=Step.OPEN)
    if a.transport == "ssh" and not location.startswith("ssh://"):
        raise V2VError(f"-it ssh: expected ssh://[USER@]HOST[:PORT]/PATH.vmx, not {location}", pb.ERROR_CODE_BAD_INPUT,
                       step=Step.OPEN)
    spec.vmx.CopyFrom(input_pb2.VmxInput(
        location=location if location.startswith("ssh://") else _local(location),
        identity_file=_local(a.io.value("vmx-identity")), password_file=_local(a.password_file),
        insecure_host_key=not a.io.switch("vmx-known-hosts", True)))


def _libvirtxml(spec: input_pb2.InputSpec, a: InputArgs) -> None:
    spec.libvirtxml.CopyFrom(input_pb2.LibvirtXmlInput(path=_local(a.one())))


def _libvirt(spec: input_pb2.InputSpec, a: InputArgs) -> None:
    if a.uri.startswith("xen+ssh://"):
        _xen(spec, a)
        return
    server, datacenter = a.io.value("vpx-server"), a.io.value("vpx-dcpath")
    if urlsplit(a.uri).scheme in ("vpx", "esx") or server or datacenter:
        _vcenter(spec, a, server, datacenter)
        return
    spec.libvirt.CopyFrom(input_pb2.LibvirtInput(uri=a.uri, domain=a.one()))


def _vcenter(spec: input_pb2.InputSpec, a: InputArgs, server: str, datacenter: str) -> None:
    """vpx:// and esx:// (or a URI whose guest's disks -io vpx-server= says are on VMware datastores)."""
    spec.vcenter.CopyFrom(input_pb2.VCenterInput(
        uri=a.uri, domain=a.one(), password_file=_local(a.password_file), insecure=not a.io.switch("sslverify", True),
        server=server, datacenter=datacenter))


def _https(a: InputArgs) -> input_pb2.VmwareHttpsInput:
    url = a.one()
    if not url.startswith("https://"):
        raise V2VError(f"-it {a.transport or 'https'}: expected https://[USER@]HOST[:PORT]/folder/PATH.vmx"
                       f"?dcPath=DATACENTER&dsName=DATASTORE, not {url}", pb.ERROR_CODE_BAD_INPUT, step=Step.OPEN)
    return input_pb2.VmwareHttpsInput(url=url, password_file=_local(a.password_file),
                                      insecure=not a.io.switch("sslverify", True))


def _vmware_https(spec: input_pb2.InputSpec, a: InputArgs) -> None:
    spec.vmware_https.CopyFrom(_https(a))


def _vddk(spec: input_pb2.InputSpec, a: InputArgs) -> None:
    port = a.io.value("vddk-port")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise V2VError(f"-io vddk-port={port}: not a port number", pb.ERROR_CODE_BAD_INPUT, step=Step.OPEN)
    spec.vddk.CopyFrom(input_pb2.VddkInput(
        https=_https(a), libdir=_local(a.io.value("vddk-libdir")), thumbprint=a.io.value("vddk-thumbprint"),
        moref=a.io.value("vddk-moref"), transports=a.io.value("vddk-transports"),
        config=_local(a.io.value("vddk-config")), nfchostport=a.io.value("vddk-nfchostport"), port=int(port or 0),
        snapshot=a.io.value("vddk-snapshot")))


def _xen(spec: input_pb2.InputSpec, a: InputArgs) -> None:
    spec.xen.CopyFrom(input_pb2.XenSshInput(uri=a.uri, domain=a.one(), password_file=_local(a.password_file)))


# -i vmx -it TRANSPORT: the transports that are an input of their own (ssh is VmxInput's)
_VMX_TRANSPORTS: dict[str, Callable[[input_pb2.InputSpec, InputArgs], None]] = {
    "https": _vmware_https, "vddk": _vddk,
}


BUILDERS: dict[str, Callable[[input_pb2.InputSpec, InputArgs], None]] = {
    "disk": _disk, "ova": _ova, "vmx": _vmx, "libvirtxml": _libvirtxml, "libvirt": _libvirt,
}


def input_spec(a: InputArgs) -> input_pb2.InputSpec:
    if not a.files:
        raise V2VError(f"-i {a.kind}: no input given", pb.ERROR_CODE_BAD_INPUT, step=Step.OPEN)
    spec = input_pb2.InputSpec()
    a.io.owner = f"-i {a.kind}"
    BUILDERS[a.kind](spec, a)
    a.io.done()
    return spec
