"""-i vmx: a VMware guest from its .vmx file, in a local directory (or NFS-mounted datastore) or on
an ESXi host over ssh (location ssh://[user@]host[:port]/vmfs/volumes/ds/guest/guest.vmx).

Local disks are whatever qemu opens (VMDK descriptor + flat extent, sparse, snapshot chains: qemu
follows parentFileNameHint relative to each file) behind qemu-nbd --snapshot. Over ssh, each disk's
descriptor is read to find its flat extent, which nbdkit's ssh plugin serves raw (sftp) under the cow
filter, as virt-v2v does; sparse and snapshot disks cannot be served that way and are refused."""

from __future__ import annotations

import os
import posixpath
import shlex
import subprocess
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from v2v.errors import V2VError
from v2v.naming import name_from_path
from v2v.nbdserver import FailFastNbdkit
from v2v.plugins import InputArgs, InputCli
from v2v.services.input.base import INPUTS, LOCAL_HOST, InputPlugin, absolute, host_of
from v2v.services.input.diskfile import probe, serve_all
from v2v.services.input.vmxfile import Vmx, VmxError, is_sparse_vmdk, parse_descriptor, parse_vmx
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

_SSH_CONNECT_TIMEOUT = 20
_SSH_TIMEOUT = 120.0  # a whole remote command: reading a .vmx or a descriptor is small
DESCRIPTOR_MAX = 65536  # descriptors are a few hundred bytes; do not pull a whole disk if misnamed
# sshpass exit codes (its own failures; any other code is ssh's).
_SSHPASS_BAD_PASSWORD = 5
_SSHPASS_HOST_KEY_UNKNOWN = 6
_SSH_FAILED = 255  # ssh itself failed (connection, authentication), not the remote command


def bad_input(message: str) -> V2VError:
    return V2VError(message, pb.ERROR_CODE_BAD_INPUT)


def read_vmx(text: str, where: str) -> Vmx:
    """A .vmx's text (read from wherever `where` says) as a Vmx with at least one disk."""
    try:
        vmx = parse_vmx(text, name_from_path(where))
    except VmxError as exc:
        raise bad_input(f"{where}: not a .vmx file: {exc}") from None
    if not vmx.disks:
        raise bad_input(f"{where}: names no hard disk")
    return vmx


def check_local_file(path: str, what: str) -> str:
    """The absolute path of a local file the user named (nbdkit wants absolute paths)."""
    p = Path(path).absolute()
    if not p.is_file() or not os.access(p, os.R_OK):
        raise bad_input(f"{p}: {what}: no such readable file")
    return str(p)


def _from_cli(a: InputArgs) -> input_pb2.VmxInput:
    location = a.one()
    if a.transport == "ssh" and not location.startswith("ssh://"):
        raise V2VError(f"-it ssh: expected ssh://[USER@]HOST[:PORT]/PATH.vmx, not {location}", pb.ERROR_CODE_BAD_INPUT,
                       step="open")
    return input_pb2.VmxInput(
        location=location if location.startswith("ssh://") else absolute(location),
        identity_file=absolute(a.io.value("vmx-identity")), password_file=absolute(a.password_file),
        insecure_host_key=not a.io.switch("vmx-known-hosts", True))


@INPUTS.register("vmx")
class VmxInput(InputPlugin[input_pb2.VmxInput]):
    cli = InputCli("vmx", _from_cli, transports=["ssh"],
                   files="a .vmx file, or ssh://[USER@]HOST[:PORT]/PATH.vmx (-it ssh, -ip FILE: its password)",
                   io=[("vmx-identity=KEYFILE", "-it ssh: the ssh private key (default: ssh's own)"),
                       ("vmx-known-hosts=off", "-it ssh: accept any host key (tests, labs)")])

    def location(self, options: input_pb2.VmxInput) -> str:
        return options.location

    def source_host(self, options: input_pb2.VmxInput) -> str:
        return host_of(options.location) if options.location.startswith("ssh://") else LOCAL_HOST

    def open(self, options: input_pb2.VmxInput, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
        if not options.location:
            raise bad_input("-i vmx: no .vmx file or ssh:// URI given")
        if options.location.startswith("ssh://"):
            return _open_ssh(options, workdir, stack)
        return _open_local(Path(options.location).absolute(), workdir, stack)


# ---------------------------------------------------------------- local


def _open_local(vmx_path: Path, workdir: WorkDir, stack: ExitStack) -> pb.Source:
    try:
        text = vmx_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise bad_input(f"{vmx_path}: no such file") from None
    except OSError as exc:
        raise bad_input(f"{vmx_path}: cannot read it: {exc.strerror or exc}") from None
    vmx = read_vmx(text, str(vmx_path))
    source = vmx.source()
    for i, d in enumerate(vmx.disks):
        path = vmx_path.parent / d.file_name  # an absolute fileName stays as it is
        if not path.exists():
            raise bad_input(f"{vmx_path}: disk {d.file_name}: no such file ({path})")
        try:
            disk = probe(path)
        except V2VError as err:
            err.message = f"{vmx_path}: {err.message}"
            raise
        disk.index, disk.controller = i, d.controller
        source.disks.append(disk)
    serve_all(source.disks, workdir, stack)
    return source


# ---------------------------------------------------------------- over ssh


@dataclass(frozen=True)
class SshSource:
    """Where the .vmx is and how to log in; never holds the password itself."""

    host: str
    port: int | None
    user: str
    path: str  # of the .vmx on the remote host
    identity: str  # absolute, or ""
    password_file: str  # absolute, or ""
    insecure: bool

    @classmethod
    def from_options(cls, options: input_pb2.VmxInput) -> SshSource:
        loc = options.location
        try:
            parts = urlsplit(loc)
            port = parts.port
        except ValueError as exc:
            raise bad_input(f"{loc}: not an ssh://[user@]host[:port]/path.vmx URI: {exc}") from None
        if parts.password is not None:
            raise bad_input("-i vmx: the ssh:// URI carries a password: put it in a file and pass that (-ip FILE)")
        if not parts.hostname:
            raise bad_input(f"{loc}: no host in the ssh:// URI")
        path = unquote(parts.path)
        if not path or path.endswith("/"):
            raise bad_input(f"{loc}: no .vmx path in the ssh:// URI")
        return cls(
            host=parts.hostname,
            port=port,
            user=unquote(parts.username or ""),
            path=path,
            identity=check_local_file(options.identity_file, "ssh identity file") if options.identity_file else "",
            password_file=check_local_file(options.password_file, "ssh password file")
            if options.password_file else "",
            insecure=options.insecure_host_key,
        )

    def uri(self, path: str = "") -> str:
        """ssh://... of a remote file, for messages and SourceDisk.location."""
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{host}{port}{path or self.path}"

    def resolve(self, file_name: str) -> str:
        """A file named in a remote .vmx or descriptor: relative names are relative to its directory."""
        return posixpath.normpath(posixpath.join(posixpath.dirname(self.path), file_name))

    def _command(self, remote: Sequence[str]) -> list[str]:
        cmd = ["ssh", "-T", "-o", f"ConnectTimeout={_SSH_CONNECT_TIMEOUT}", "-o", "LogLevel=ERROR"]
        if self.port:
            cmd += ["-p", str(self.port)]
        if self.user:
            cmd += ["-l", self.user]
        if self.identity:
            # only this key: a default key that happens to work would hide a wrong -io vmx-identity
            cmd += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        if self.insecure:
            cmd += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        else:
            cmd += ["-o", "StrictHostKeyChecking=yes"]
        if self.password_file:
            # BatchMode would forbid the password prompt that sshpass answers
            cmd = ["sshpass", "-f", self.password_file, *cmd, "-o", "NumberOfPasswordPrompts=1"]
        else:
            cmd += ["-o", "BatchMode=yes"]
        return [*cmd, "--", self.host, shlex.join(remote)]

    def run(self, remote: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        """Runs a command on the host. Failing to get there raises; the command's own status is the
        caller's to judge."""
        cmd = self._command(remote)
        try:
            res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=_SSH_TIMEOUT,
                                 check=False)
        except FileNotFoundError:
            raise V2VError(f"-i vmx over ssh: {cmd[0]} is not installed", pb.ERROR_CODE_PROCESS_FAILED) from None
        except subprocess.TimeoutExpired:
            raise bad_input(f"{self.uri()}: {self.host} did not answer within {_SSH_TIMEOUT:.0f} s") from None
        stderr = res.stderr.decode(errors="replace").strip()
        last = stderr.splitlines()[-1] if stderr else ""
        low = stderr.lower()
        if (self.password_file and res.returncode == _SSHPASS_BAD_PASSWORD) or \
                (res.returncode == _SSH_FAILED and "permission denied" in low):
            raise V2VError(f"{self.uri()}: authentication failed", pb.ERROR_CODE_BAD_INPUT, detail=stderr)
        if "host key verification failed" in low or \
                (self.password_file and res.returncode == _SSHPASS_HOST_KEY_UNKNOWN):
            raise V2VError(f"{self.uri()}: host key verification failed (add the host to known_hosts, or accept "
                           "any host key with -io vmx-known-hosts=off)", pb.ERROR_CODE_BAD_INPUT, detail=stderr)
        if res.returncode == _SSH_FAILED:
            raise V2VError(f"{self.uri()}: cannot connect to {self.host}: {last or 'ssh failed'}",
                           pb.ERROR_CODE_BAD_INPUT, detail=stderr)
        return res

    def read(self, path: str, limit: int = 0) -> bytes:
        res = self.run(["head", "-c", str(limit), "--", path] if limit else ["cat", "--", path])
        if res.returncode != 0:
            why = res.stderr.decode(errors="replace").strip().splitlines()
            raise bad_input(f"{self.uri(path)}: cannot read it: {why[-1] if why else f'exit status {res.returncode}'}")
        return res.stdout

    def exists(self, path: str) -> bool:
        return self.run(["test", "-f", path]).returncode == 0

    def nbdkit_args(self, path: str) -> list[str]:
        args = [f"host={self.host}", f"path={path}"]
        if self.port:
            args.append(f"port={self.port}")
        if self.user:
            args.append(f"user={self.user}")
        if self.identity:
            args.append(f"identity={self.identity}")
        if self.password_file:
            args.append(f"password=+{self.password_file}")
        if self.insecure:
            args.append("verify-remote-host=false")
        return args


def remote_extent(head: bytes, where: str, transport: str) -> tuple[str, int]:
    """(flat extent file name, relative to its descriptor; virtual size) from the start of a remote
    disk: only a flat VMDK (a descriptor and its -flat.vmdk) can be served raw from afar."""
    if is_sparse_vmdk(head):
        raise V2VError(f"{where}: a sparse VMDK; over {transport} only flat VMDKs (a descriptor and its -flat.vmdk) "
                       "can be served: convert it on the host, or open the .vmx locally", pb.ERROR_CODE_UNSUPPORTED)
    try:
        desc = parse_descriptor(head.decode("utf-8", errors="replace"))
    except VmxError as exc:
        raise bad_input(f"{where}: {exc}") from None
    extent = desc.flat_extent()
    if extent is None:
        kind = "a snapshot (delta) disk" if desc.parent else f"a {desc.create_type} VMDK"
        raise V2VError(f"{where}: {kind}; over {transport} only flat VMDKs can be served: consolidate the "
                       "snapshots, or open the .vmx locally", pb.ERROR_CODE_UNSUPPORTED)
    return extent.file_name, desc.size


def _flat_extent(ssh: SshSource, file_name: str) -> tuple[str, int]:
    """(remote path of the raw extent, virtual size) of a disk named in the .vmx."""
    path = ssh.resolve(file_name)
    where = f"{ssh.uri()}: disk {file_name}"
    extent, size = remote_extent(ssh.read(path, DESCRIPTOR_MAX), where, "ssh")
    flat = posixpath.normpath(posixpath.join(posixpath.dirname(path), extent))
    if not ssh.exists(flat):
        raise bad_input(f"{where}: its extent {ssh.uri(flat)} does not exist")
    return flat, size


def _open_ssh(options: input_pb2.VmxInput, workdir: WorkDir, stack: ExitStack) -> pb.Source:
    ssh = SshSource.from_options(options)
    text = ssh.read(ssh.path).decode("utf-8", errors="replace")
    vmx = read_vmx(text, ssh.uri())
    source = vmx.source()
    flats = []
    for i, d in enumerate(vmx.disks):
        flat, size = _flat_extent(ssh, d.file_name)
        flats.append(flat)
        source.disks.append(pb.SourceDisk(index=i, location=ssh.uri(flat), format="raw", virtual_size=size,
                                          controller=d.controller))
    for disk, flat in zip(source.disks, flats, strict=True):
        server = SshNbdkit(ssh, workdir.in_sock(disk.index), workdir.log(f"input-disk{disk.index}.log"),
                            f"disk {disk.index} ({disk.location})", ssh.nbdkit_args(flat))
        try:
            stack.enter_context(server)
        except V2VError as err:
            err.fill(disk=disk.index)
            raise
    return source


class SshNbdkit(FailFastNbdkit):
    """nbdkit's ssh plugin under the cow filter, with the retry filter next to the plugin: a
    dropped ssh connection (a network blip, the host's sshd restarted) is a new session and the
    read again, as virt-v2v stacks it, instead of every later read failing. A refused login is an
    authentication error."""

    def __init__(self, ssh: SshSource, sock: Path, log: Path, what: str, args: Sequence[str]) -> None:
        self.ssh = ssh
        super().__init__(sock, log, what, "ssh", args, filters=["cow", "retry"])

    def refusal(self, error: str) -> V2VError:
        if "authentication" in error:
            return V2VError(f"{self.ssh.uri()}: authentication failed (nbdkit ssh)", pb.ERROR_CODE_BAD_INPUT,
                            detail=error)
        return super().refusal(error)
