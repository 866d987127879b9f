"""-i libvirt -ic xen+ssh://[user@]host[:port]: a guest of a Xen host, as virt-v2v reads one. Its
inactive domain XML comes through libvirt (the host's libvirtd and its Xen driver, reached over
ssh); its disks, files on the host, are read over ssh (sftp) by nbdkit's ssh plugin under the cow
filter, exactly as -i vmx reads a flat extent over ssh. A disk in another format than raw
(<driver type="qcow2">, or qcow2 found by its magic) gets qemu-nbd --snapshot on top.

The -ic URI serves both legs: libvirt's own ?keyfile=KEY and ?no_verify=1 are also the identity
file and the host key policy of the disks' ssh connections. Disks on block devices are refused, as
virt-v2v refuses them: sftp cannot tell a block device's size."""

from __future__ import annotations

import posixpath
from contextlib import ExitStack
from urllib.parse import parse_qs, unquote, urlsplit

from v2v.errors import V2VError
from v2v.libvirtconn import connect
from v2v.nbdclient import export_size, nbd_uri
from v2v.nbdserver import NbdServer, QemuNbd
from v2v.plugins import InputArgs, InputCli
from v2v.services.input.base import INPUTS, InputPlugin, absolute, host_of
from v2v.services.input.diskfile import FORMATS
from v2v.services.input.domainxml import DiskRef, parse_domain
from v2v.services.input.libvirt import inactive_domain_xml
from v2v.services.input.vmx import SshNbdkit, SshSource, bad_input, check_local_file
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

SCHEME = "xen+ssh"
# What libvirt says when the daemon it reached has no driver for the URI's hypervisor.
_NO_DRIVER = "no connection driver available"
# Old Xen (xm, tap:aio) writes "aio" for a raw file, as virt-v2v knows.
_FORMAT_ALIASES = {"aio": "raw"}
_QCOW2_MAGIC = b"QFI\xfb"




def ssh_source(uri: str, password_file: str) -> SshSource:
    """How to reach the Xen host's files over ssh, from the -ic URI (see the module's doc)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise bad_input(f"-ic {uri}: not a {SCHEME}://[USER@]HOST[:PORT] URI: {exc}") from None
    if parts.scheme != SCHEME:
        raise bad_input(f"-ic {uri}: Xen is read over ssh only: {SCHEME}://[USER@]HOST[:PORT]")
    if parts.password is not None:
        raise bad_input(f"-ic {SCHEME}://...: the URI carries a password: put it in a file and pass that (-ip FILE)")
    if not parts.hostname:
        raise bad_input(f"-ic {uri}: no host in the {SCHEME}:// URI")
    query = parse_qs(parts.query)
    keyfile = query.get("keyfile", [""])[-1]
    return SshSource(
        host=parts.hostname,
        port=port,
        user=unquote(parts.username or ""),
        path="",
        identity=check_local_file(keyfile, "ssh identity file (?keyfile=)") if keyfile else "",
        password_file=check_local_file(password_file, "ssh password file") if password_file else "",
        insecure=query.get("no_verify", ["0"])[-1] == "1",
    )


def domain_xml(uri: str, domain: str) -> bytes:
    """The guest's inactive domain XML from the Xen host's libvirt. A daemon without a Xen driver is
    UNSUPPORTED, in words that say so; other failures are libvirt's own."""
    try:
        with connect(uri, readonly=True) as conn:
            return inactive_domain_xml(conn, uri, domain).encode()
    except V2VError as err:
        if _NO_DRIVER not in err.message:
            raise
        raise V2VError(f"libvirt's Xen driver is not available here ({uri}: {_NO_DRIVER} for Xen): the host "
                       "must run libvirtd with its Xen (libxl) driver", pb.ERROR_CODE_UNSUPPORTED,
                       detail=err.detail or err.message) from None


def _disk_format(ssh: SshSource, ref: DiskRef) -> str:
    """The disk's format: <driver type> (old Xen's aliases mapped), else qcow2 by its magic, else raw.
    Reading the magic also proves the file is there and readable."""
    head = ssh.read(ref.path, len(_QCOW2_MAGIC))
    fmt = _FORMAT_ALIASES.get(ref.format, ref.format)
    if fmt and fmt not in FORMATS:
        raise bad_input(f"<driver type={ref.format!r}> is not a disk format v2v reads (known: {', '.join(FORMATS)})")
    return fmt or ("qcow2" if head == _QCOW2_MAGIC else "raw")


def _check(ssh: SshSource, ref: DiskRef) -> str:
    """The format of a disk that can be served, after refusing those that cannot."""
    if ref.kind == "block":
        raise V2VError(f"{ref.target}: {ref.path} is a block device on the Xen host: over ssh only files can be "
                       "read (sftp cannot tell a block device's size); copy it to a file on the host, or convert "
                       "on the host itself", pb.ERROR_CODE_UNSUPPORTED)
    if ref.kind != "file":
        raise V2VError(f"{ref.target}: a {ref.kind} disk: from a Xen host over ssh only files can be read",
                       pb.ERROR_CODE_UNSUPPORTED)
    if not posixpath.isabs(ref.path):
        raise bad_input(f"{ref.target}: {ref.path} is not an absolute path on the Xen host")
    return _disk_format(ssh, ref)


def _serve(ssh: SshSource, disk: pb.SourceDisk, path: str, workdir: WorkDir, stack: ExitStack) -> None:
    """Disk N on in<N>.sock: nbdkit ssh + cow directly for raw; otherwise nbdkit on a private socket
    (as short as in<N>.sock, whose length WorkDir checked) and qemu-nbd --snapshot reading it."""
    n = disk.index
    what = f"disk {n} ({disk.location})"
    if disk.format == "raw":
        stack.enter_context(SshNbdkit(ssh, workdir.in_sock(n), workdir.log(f"input-disk{n}.log"), what,
                                       ssh.nbdkit_args(path)))
        return
    remote = workdir.path / f"rm{n}.sock"
    stack.enter_context(SshNbdkit(ssh, remote, workdir.log(f"input-disk{n}-ssh.log"), what, ssh.nbdkit_args(path)))
    server: NbdServer = QemuNbd(workdir.in_sock(n), workdir.log(f"input-disk{n}.log"), what, nbd_uri(remote),
                                disk.format, snapshot=True)
    stack.enter_context(server)


def open_xen_domain(xml: bytes, where: str, ssh: SshSource, workdir: WorkDir, stack: ExitStack) -> pb.Source:
    """The guest of a Xen domain XML whose disks are files on the host `ssh` reaches, each served on
    its in socket behind an overlay. `where` names the guest in messages."""
    domain = parse_domain(xml, where)
    source = domain.source
    formats = []
    for ref in domain.disks:  # every disk checked before any server starts
        try:
            formats.append(_check(ssh, ref))
        except V2VError as err:
            err.message = f"{where}: {err.message}"
            err.fill(disk=ref.index)
            raise
    for ref, fmt in zip(domain.disks, formats, strict=True):
        disk = pb.SourceDisk(index=ref.index, location=ssh.uri(ref.path), format=fmt, controller=ref.controller)
        try:
            _serve(ssh, disk, ref.path, workdir, stack)
        except V2VError as err:
            err.fill(disk=ref.index)
            raise
        disk.virtual_size = export_size(str(workdir.in_sock(ref.index)))  # the file's, or the image's virtual size
        source.disks.append(disk)
    return source


def _from_cli(a: InputArgs) -> input_pb2.XenSshInput:
    return input_pb2.XenSshInput(uri=a.uri, domain=a.one(), password_file=absolute(a.password_file))


@INPUTS.register("xen")
class XenSshInput(InputPlugin[input_pb2.XenSshInput]):
    cli = InputCli("libvirt", _from_cli, picks=lambda a: a.uri.startswith("xen+ssh://"),
                   files="-ic xen+ssh://[USER@]HOST: a Xen guest's name (-ip FILE: the ssh password for its disks)")

    def location(self, options: input_pb2.XenSshInput) -> str:
        return options.domain

    def source_host(self, options: input_pb2.XenSshInput) -> str:
        return host_of(options.uri)

    def open(self, options: input_pb2.XenSshInput, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
        if not options.domain:
            raise bad_input(f"-i libvirt: name the guest to convert (one of `virsh -c {options.uri} list --all`)")
        ssh = ssh_source(options.uri, options.password_file)
        xml = domain_xml(options.uri, options.domain)
        return open_xen_domain(xml, f"{options.uri} guest {options.domain}", ssh, workdir, stack)
