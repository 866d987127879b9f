"""-i libvirt: a guest known to a libvirt connection (-ic URI), read through the libvirt API: its
inactive domain XML is what -i libvirtxml reads from a file."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from v2v.errors import V2VError
from v2v.libvirtconn import connect, failed, libvirt
from v2v.plugins import InputArgs, InputCli
from v2v.services.input.base import INPUTS, InputPlugin, host_of
from v2v.services.input.libvirtxml import open_domain_xml
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

DEFAULT_URI = "qemu:///system"
# libvirt's ESX driver: the disks it describes are on VMware datastores, which the vcenter input reads
VMWARE_SCHEMES = ("vpx", "esx")


def inactive_domain_xml(conn: libvirt.virConnect, uri: str, domain: str) -> str:
    """The domain XML of a guest that is shut off (the disks of a running guest change under the copy)."""
    try:
        dom = conn.lookupByName(domain)
    except libvirt.libvirtError as exc:
        raise failed(f"-i libvirt: no guest {domain!r} at {uri}", exc, pb.ERROR_CODE_BAD_INPUT) from None
    if dom.isActive():
        raise V2VError(f"guest {domain} at {uri} is running: shut it down first (the disks of a running guest "
                       "change under the copy)", pb.ERROR_CODE_BAD_INPUT)
    xml: str = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return xml


def _from_cli(a: InputArgs) -> input_pb2.LibvirtInput:
    return input_pb2.LibvirtInput(uri=a.uri, domain=a.one())


@INPUTS.register("libvirt")
class LibvirtInput(InputPlugin[input_pb2.LibvirtInput]):
    cli = InputCli("libvirt", _from_cli, files="a guest's name (-ic URI: its libvirt connection)")

    def location(self, options: input_pb2.LibvirtInput) -> str:
        return options.domain

    def source_host(self, options: input_pb2.LibvirtInput) -> str:
        return host_of(options.uri)

    def open(self, options: input_pb2.LibvirtInput, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
        uri = options.uri or DEFAULT_URI
        if not options.domain:
            raise V2VError(f"-i libvirt: name the guest to convert (one of `virsh -c {uri} list --all`)",
                           pb.ERROR_CODE_BAD_INPUT)
        if urlsplit(uri).scheme in VMWARE_SCHEMES:
            raise V2VError(f"{uri}: a VMware URI: its guests are read by the vcenter input (InputSpec.vcenter, "
                           "which also takes the password file)", pb.ERROR_CODE_BAD_INPUT)
        with connect(uri, readonly=True) as conn:
            xml = inactive_domain_xml(conn, uri, options.domain)
        # libvirt keeps absolute paths; "/" only matters for a relative one, which libvirt refuses.
        return open_domain_xml(xml.encode(), f"{uri} guest {options.domain}", Path("/"), workdir, stack)
