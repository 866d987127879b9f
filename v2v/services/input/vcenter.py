"""-i libvirt -ic vpx://USER@VCENTER/DATACENTER/[CLUSTER/]ESXI | esx://USER@ESXI: a VMware guest, read
as virt-v2v reads one without VDDK. libvirt's ESX driver (which speaks vSphere's SOAP API) gives the
guest's inactive domain XML: its disks are datastore paths ("[datastore1] guest/guest.vmdk") and its
<vmware:datacenterpath> names the datacenter. Each disk is then read as -i vmx -it https reads one,
by the same code (vmware_https): its descriptor and flat extent at
https://SERVER[:PORT]/folder/guest/guest.vmdk?dcPath=DATACENTER&dsName=datastore1, the first request
logged in with the URI's user and the -ip password, the others with the vmware_soap_session cookie
that request got, and nbdkit curl with sessions of its own that it renews (-io session-renew=SECS);
?no_verify=1 in the URI turns off certificate checks.

Unlike virt-v2v, which appends "-flat" to the name unseen and, for a snapshot disk (NAME-00000N.vmdk),
silently reads the base disk's extent instead (losing what the snapshot holds), the descriptor is
read: it names the extent, and sparse and snapshot disks are refused (consolidate the snapshots)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from urllib.parse import parse_qs, unquote, urlsplit

from v2v.errors import V2VError
from v2v.libvirtconn import failed, libvirt
from v2v.plugins import InputArgs, InputCli
from v2v.services.input.base import INPUTS, InputPlugin, absolute, host_of
from v2v.services.input.domainxml import DiskRef, parse_domain, parse_xml
from v2v.services.input.libvirt import VMWARE_SCHEMES, inactive_domain_xml
from v2v.services.input.vmware_https import (
    RENEW_HELP,
    DsFile,
    Server,
    flat_extent,
    read_password,
    renew_from_cli,
    serve_extents,
)
from v2v.services.input.vmx import bad_input, check_local_file
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

ESX_DATACENTER = "ha-datacenter"  # an ESXi host's one datacenter, as libvirt's ESX driver names it
_DATACENTER_PATH = "{http://libvirt.org/schemas/domain/vmware/1.0}datacenterpath"  # libvirt >= 1.2.20
_DATASTORE_PATH = re.compile(r"\[(?P<datastore>[^\]]+)\] (?P<path>[^/].*)")


def datastore_server(options: input_pb2.VCenterInput) -> Server:
    """The server whose datastores hold the disks, and the login, from the -ic URI (or -io
    vpx-server=); its datacenter is left for `datacenter` to fill in once the XML is there."""
    uri = options.uri
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise bad_input(f"-ic {uri}: not a URI: {exc}") from None
    if parts.password is not None:
        raise bad_input(f"-ic {parts.scheme}://...: the URI carries a password: put it in a file and pass that "
                        "(-ip FILE)")
    where = parts
    if options.server:
        try:
            where = urlsplit(f"https://{options.server}")
            port = where.port
        except ValueError as exc:
            raise bad_input(f"-io vpx-server={options.server}: not USER@HOST[:PORT]: {exc}") from None
        if where.password is not None or where.path or where.query or not where.hostname:
            raise bad_input(f"-io vpx-server={options.server}: not USER@HOST[:PORT] (the password goes in -ip FILE)")
    elif parts.scheme not in VMWARE_SCHEMES:
        raise bad_input(f"-ic {uri}: not a vpx:// or esx:// URI, and no -io vpx-server=USER@HOST[:PORT] says where "
                        "the datastores are")
    if not where.hostname:
        raise bad_input(f"-ic {uri}: no server in the URI ({parts.scheme}://USER@HOST...)")
    user = unquote(where.username or "")
    if not user:
        given = f"-io vpx-server={options.server}" if options.server else f"-ic {uri}"
        raise bad_input(f"{given}: name the user: USER@{where.hostname} (vCenter's single sign-on users as "
                        "administrator%40vsphere.local)")
    if not options.password_file:
        raise bad_input(f"-ic {uri}: the password of {user} is needed in a file (-ip FILE), for libvirt and for the "
                        "datastores")
    no_verify = parse_qs(parts.query).get("no_verify", ["0"])[-1] == "1"
    return Server(host=where.hostname, port=port, user=user, datacenter="",
                  password_file=check_local_file(options.password_file, "password file"),
                  verify=not (options.insecure or no_verify))


def datacenter(options: input_pb2.VCenterInput, xml: bytes, where: str) -> str:
    """The dcPath of the datastore URLs: -io vpx-dcpath=, else what libvirt's ESX driver wrote in
    the XML (vCenter: the datacenter's inventory path, folders included), else ESXi's one."""
    if options.datacenter:
        return options.datacenter
    written = parse_xml(xml, where).findtext(_DATACENTER_PATH, "").strip()
    if written:
        return written
    if urlsplit(options.uri).scheme == "esx":
        return ESX_DATACENTER
    raise bad_input(f"{where}: the domain XML has no <vmware:datacenterpath> (libvirt older than 1.2.20, or not "
                    "its ESX driver): name the datacenter with -io vpx-dcpath=DATACENTER")


def descriptor(ref: DiskRef) -> DsFile:
    """The datastore file a disk's "[DATASTORE] PATH" names (its VMDK descriptor)."""
    m = _DATASTORE_PATH.fullmatch(ref.path) if ref.kind == "file" else None
    if m is None:
        what = f"{ref.path!r}" if ref.kind == "file" else f"a {ref.kind} disk"
        raise bad_input(f"{ref.target}: {what} is not a datastore path ([DATASTORE] DIR/NAME.vmdk), the only kind of "
                        "disk read from VMware")
    return DsFile(m["datastore"], posixpath.normpath(m["path"]))


@contextmanager
def _connection(uri: str, server: Server) -> Iterator[libvirt.virConnect]:
    """A read-only libvirt connection that answers the ESX driver's questions for the user and the
    password (virt-v2v's auth callback: the password from -ip, never a prompt)."""
    if libvirt is None:
        raise V2VError("libvirt's Python bindings are not installed (Debian: python3-libvirt)",
                       pb.ERROR_CODE_UNSUPPORTED)
    password = read_password(server.password_file)

    def answer(creds: list[list[object]], _data: object) -> int:
        for cred in creds:
            if cred[0] == libvirt.VIR_CRED_AUTHNAME:
                cred[4] = server.user
            elif cred[0] in (libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT):
                cred[4] = password
            else:
                return -1
        return 0

    auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT], answer, None]
    try:
        conn = libvirt.openAuth(uri, auth, libvirt.VIR_CONNECT_RO)
    except libvirt.libvirtError as exc:
        raise failed(f"libvirt cannot connect to {uri}", exc, pb.ERROR_CODE_BAD_INPUT) from None
    try:
        yield conn
    finally:
        conn.close()


def domain_xml(uri: str, domain: str, server: Server) -> bytes:
    """The guest's inactive domain XML, from libvirt's ESX driver (or any driver the URI names)."""
    with _connection(uri, server) as conn:
        return inactive_domain_xml(conn, uri, domain).encode()


def open_vcenter_domain(xml: bytes, where: str, server: Server, workdir: WorkDir, stack: ExitStack,
                        renew_seconds: int) -> pb.Source:
    """The guest of a domain XML whose disks are datastore paths on `server`'s datastores, each flat
    extent served on its in socket behind an overlay, its session renewed every `renew_seconds` (0:
    the default). `where` names the guest in messages."""
    domain = parse_domain(xml, where)
    source = domain.source
    session = server.session()
    flats = []
    for ref in domain.disks:  # every disk checked (and the login made) before any server starts
        try:
            flat, size = flat_extent(session, descriptor(ref), f"disk {ref.path}")
        except V2VError as err:
            err.message = f"{where}: {err.message}"
            err.fill(disk=ref.index)
            raise
        flats.append(flat)
        source.disks.append(pb.SourceDisk(index=ref.index, location=server.url(flat), format="raw",
                                          virtual_size=size, controller=ref.controller))
    serve_extents(session, source.disks, flats, workdir, stack, renew_seconds)
    return source


def _from_cli(a: InputArgs) -> input_pb2.VCenterInput:
    return input_pb2.VCenterInput(
        uri=a.uri, domain=a.one(), password_file=absolute(a.password_file), insecure=not a.io.switch("sslverify", True),
        server=a.io.value("vpx-server"), datacenter=a.io.value("vpx-dcpath"), session_renew_seconds=renew_from_cli(a))


def _picks(a: InputArgs) -> bool:
    """vpx:// and esx://, or a URI whose guest's disks -io vpx-server= says are on VMware datastores."""
    return urlsplit(a.uri).scheme in ("vpx", "esx") or a.io.given("vpx-server") or a.io.given("vpx-dcpath")


@INPUTS.register("vcenter")
class VCenterInput(InputPlugin[input_pb2.VCenterInput]):
    cli = InputCli("libvirt", _from_cli, picks=_picks,
                   files="-ic vpx://USER@VCENTER/DC/ESXI | esx://USER@ESXI: a VMware guest's name (-ip FILE required)",
                   io=[("sslverify=false", "-ic vpx:// or esx://: accept any certificate"),
                       ("vpx-server=USER@HOST[:PORT]", "read the datastores from this server, not the URI's"),
                       ("vpx-dcpath=DATACENTER", "the datastores' dcPath when the domain XML has none"),
                       ("session-renew=SECS", f"-ic vpx:// or esx://: {RENEW_HELP}")])

    def location(self, options: input_pb2.VCenterInput) -> str:
        return options.domain

    def source_host(self, options: input_pb2.VCenterInput) -> str:
        return host_of(options.uri)

    def open(self, options: input_pb2.VCenterInput, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
        if not options.domain:
            raise bad_input(f"-i libvirt: name the guest to convert (one of `virsh -c '{options.uri}' list --all`)")
        server = datastore_server(options)
        where = f"{options.uri} guest {options.domain}"
        xml = domain_xml(options.uri, options.domain, server)
        server = replace(server, datacenter=datacenter(options, xml, where))
        return open_vcenter_domain(xml, where, server, workdir, stack, options.session_renew_seconds)
