"""-i vmx -it https: a VMware guest on an ESXi host's or vCenter's datastore, read over HTTPS the way
virt-v2v's -ic vpx://|esx:// reads disks. VMware serves every datastore file at
https://HOST/folder/PATH?dcPath=DATACENTER&dsName=DATASTORE; here the .vmx is downloaded from there
and parsed like a local one (vmxfile). The datastore reads (Server, Session, flat_extent,
serve_extents) are also those of -i libvirt -ic vpx://|esx:// (vcenter), where libvirt's ESX driver
describes the guest instead.

The first request logs in with basic auth; VMware answers with a session cookie
(vmware_soap_session) that every later request of v2v's carries instead. nbdkit's curl plugin
serves each disk's flat extent (-flat.vmdk) under the retry filter (brief outages of the host) and
the cow filter (later phases write to an overlay, never to the datastore); it gets its cookie from
a cookie-script (vmware_cookie) that logs in afresh at its start and every session_renew_seconds
(25 minutes, as virt-v2v), so that a copy outlives the vSphere session. Sparse and snapshot disks
cannot be read as plain bytes over HTTP and are refused."""

from __future__ import annotations

import base64
import http.client
import posixpath
import shlex
import ssl
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

from v2v.errors import V2VError
from v2v.nbdserver import FailFastNbdkit
from v2v.plugins import InputArgs, InputCli
from v2v.services.input.base import INPUTS, InputPlugin, absolute, host_of
from v2v.services.input.vmx import DESCRIPTOR_MAX, bad_input, check_local_file, read_vmx, remote_extent
from v2v.services.input.vmxfile import Vmx
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

COOKIE = "vmware_soap_session"
_TIMEOUT = 60.0  # one request; the .vmx and descriptors are small
_VMX_MAX = 1 << 20  # a .vmx is a few KiB: a URL naming a disk by mistake must not download it whole
_DEFAULT_PORT = 443
_FOLDER = "/folder/"
_VOLUMES = "/vmfs/volumes/"  # how an ESXi host writes an absolute path to another datastore
# virt-v2v's interval: vSphere ends a session after 30 minutes idle (its default)
DEFAULT_RENEW_SECONDS = 25 * 60
# named, not imported: that module imports this one (and runs in nbdkit's child, not here)
_COOKIE_SCRIPT = "v2v.services.input.vmware_cookie"


@dataclass(frozen=True)
class DsFile:
    """A file on a datastore: its name and the path below the datastore's top directory."""

    datastore: str
    path: str  # no leading slash: "guest/guest.vmx"


@dataclass(frozen=True)
class Server:
    """An ESXi host or vCenter whose datastores are read over HTTPS, and how to log in. Never holds
    the password itself."""

    host: str
    port: int | None
    user: str
    datacenter: str  # the dcPath of every URL
    password_file: str  # absolute, or ""
    verify: bool

    def url(self, f: DsFile, user: bool = True) -> str:
        """The https:// URL of a datastore file; with the user for messages, without it for
        clients (curl would otherwise log in as that user with an empty password)."""
        who = f"{quote(self.user)}@" if user and self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return (f"https://{who}{host}{port}{_FOLDER}{quote(f.path)}"
                f"?dcPath={quote(self.datacenter, safe='')}&dsName={quote(f.datastore, safe='')}")

    def session(self: S) -> Session[S]:
        return Session(self)


S = TypeVar("S", bound=Server)


@dataclass(frozen=True)
class Https(Server):
    """-i vmx -it https: the server, and where on it the .vmx is."""

    vmx: DsFile

    @classmethod
    def from_options(cls, options: input_pb2.VmwareHttpsInput) -> Https:
        url = options.url
        usage = "https://[USER@]HOST[:PORT]/folder/PATH.vmx?dcPath=DATACENTER&dsName=DATASTORE"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise bad_input(f"{url}: not an {usage} URL: {exc}") from None
        if parts.scheme != "https":
            raise bad_input(f"{url}: not an {usage} URL")
        if parts.password is not None:
            raise bad_input("-it https: the URL carries a password: put it in a file and pass that (-ip FILE)")
        if not parts.hostname:
            raise bad_input(f"{url}: no host in the URL")
        query = parse_qs(parts.query)
        datacenter, datastore = query.get("dcPath", [""])[-1], query.get("dsName", [""])[-1]
        path = unquote(parts.path)
        if not path.startswith(_FOLDER) or not path.endswith(".vmx") or not datastore:
            raise bad_input(f"{url}: expected {usage} (as the datastore browser shows it)")
        user = unquote(parts.username or "")
        if options.password_file and not user:
            raise bad_input(f"{url}: -ip gives a password but the URL names no user (https://USER@HOST/...)")
        return cls(
            host=parts.hostname, port=port, user=user, datacenter=datacenter,
            vmx=DsFile(datastore, path[len(_FOLDER):]),
            password_file=check_local_file(options.password_file, "password file") if options.password_file else "",
            verify=not options.insecure,
        )

    def resolve(self, file_name: str) -> DsFile:
        """A file named in the .vmx or a descriptor: relative names are relative to its directory,
        /vmfs/volumes/DATASTORE/... is on that datastore."""
        if file_name.startswith(_VOLUMES):
            datastore, _, rest = file_name[len(_VOLUMES):].partition("/")
            if datastore and rest:
                return DsFile(datastore, posixpath.normpath(rest))
        if file_name.startswith("/"):
            raise bad_input(f"{self.url(self.vmx)}: {file_name} is not on a datastore (/vmfs/volumes/DATASTORE/...)")
        return DsFile(self.vmx.datastore, posixpath.normpath(posixpath.join(posixpath.dirname(self.vmx.path),
                                                                            file_name)))


def read_password(password_file: str) -> str:
    """The password in a file (-ip FILE), without the line end."""
    try:
        return Path(password_file).read_text().rstrip("\r\n")
    except OSError as exc:
        raise bad_input(f"{password_file}: cannot read the password file: {exc.strerror}") from None


@dataclass
class Session(Generic[S]):
    """Requests to the host: basic auth on the first, the session cookie it returns afterwards."""

    server: S
    cookie: str = ""  # "vmware_soap_session=..." once logged in
    _password: str | None = field(default=None, init=False, repr=False)  # read at the first login

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if not self.server.verify:  # -io sslverify=false: any certificate, any name
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _authorization(self) -> str:
        if self._password is None:
            self._password = read_password(self.server.password_file) if self.server.password_file else ""
        token = base64.b64encode(f"{self.server.user}:{self._password}".encode()).decode()
        return f"Basic {token}"

    def request(self, method: str, f: DsFile, limit: int = 0) -> tuple[int, http.client.HTTPMessage, bytes]:
        """(status, headers, body) of one request; `limit` reads only the first bytes (a Range)."""
        where = self.server.url(f)
        headers = {"User-Agent": "v2v"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        elif self.server.user:
            headers["Authorization"] = self._authorization()
        if limit:
            headers["Range"] = f"bytes=0-{limit - 1}"
        target = self.server.url(f, user=False)
        target = target[target.index(_FOLDER):]
        conn = http.client.HTTPSConnection(self.server.host, self.server.port or _DEFAULT_PORT, timeout=_TIMEOUT,
                                           context=self._context())
        try:
            conn.request(method, target, headers=headers)
            resp = conn.getresponse()
            # read(limit): a server that ignores Range must not send a whole disk through here
            body = resp.read(limit or None) if method != "HEAD" else b""
        except ssl.SSLCertVerificationError as exc:
            raise bad_input(f"{where}: certificate verify failed: {exc.verify_message} (trust its CA in the system's "
                       "store, or accept any certificate with -io sslverify=false)") from None
        except ssl.SSLError as exc:
            raise bad_input(f"{where}: TLS failed: {exc.reason or exc}") from None
        except (OSError, http.client.HTTPException) as exc:  # refused, unknown host, timeout, reset
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            raise bad_input(f"{where}: cannot connect to {self.server.host}: {why}") from None
        finally:
            conn.close()
        if not self.cookie:
            self.cookie = _session_cookie(resp.headers.get_all("Set-Cookie") or [])
        if resp.status == 401:
            hint = "" if self.server.user else " (name the user in the URL: https://USER@HOST/...)"
            if self.server.user and not self.server.password_file:
                hint = " (no password given: -ip FILE)"
            raise V2VError(f"{where}: authentication failed{hint}", pb.ERROR_CODE_BAD_INPUT,
                           detail=f"HTTP {resp.status} {resp.reason}")
        return resp.status, resp.headers, body

    def read(self, f: DsFile, limit: int = 0) -> bytes:
        status, _, body = self.request("GET", f, limit)
        if status not in (200, 206):
            raise bad_input(f"{self.server.url(f)}: cannot read it: {_status(status)}")
        return body

    def size(self, f: DsFile) -> int | None:
        """The file's size, or None when it is not there."""
        status, headers, _ = self.request("HEAD", f)
        if status == 404:
            return None
        length = headers.get("Content-Length")
        if status != 200 or not (length or "").isdigit():
            raise bad_input(f"{self.server.url(f)}: cannot read its size: {_status(status)}")
        if headers.get("Accept-Ranges", "").lower() != "bytes":
            raise bad_input(f"{self.server.url(f)}: the server does not serve byte ranges (Accept-Ranges: bytes)")
        return int(length or 0)

    def curl_args(self, f: DsFile, what: str, renew_seconds: int) -> list[str]:
        """nbdkit curl's parameters for a file (`what` names it in errors): a cookie-script that logs
        in and is run again every `renew_seconds` or, if the host gave this session no cookie, the
        user and password file."""
        args = [f"url={self.server.url(f, user=False)}", "protocols=https", f"timeout={_TIMEOUT:.0f}"]
        if self.cookie:
            args += [f"cookie-script={self.cookie_script(f, what)}", f"cookie-script-renew={renew_seconds}"]
        elif self.server.user:
            args.append(f"user={self.server.user}")
            if self.server.password_file:
                args.append(f"password=+{self.server.password_file}")
        if not self.server.verify:
            args.append("sslverify=false")
        return args

    def cookie_script(self, f: DsFile, what: str) -> str:
        """The shell command nbdkit runs for a cookie: vmware_cookie, given where the password is
        (the -ip file), never the password; and nbdkit's $iteration, how many times it ran before."""
        server = self.server
        cmd = [sys.executable, "-m", _COOKIE_SCRIPT, "--host", server.host, "--user", server.user,
               "--password-file", server.password_file, "--datacenter", server.datacenter,
               "--datastore", f.datastore, "--path", f.path, "--what", what]
        if server.port:
            cmd += ["--port", str(server.port)]
        if not server.verify:
            cmd.append("--insecure")
        return f'{shlex.join(cmd)} --iteration "$iteration"'


def _status(status: int) -> str:
    if status == 404:
        return "no such file on the datastore (HTTP 404)"
    return f"HTTP {status} {http.client.responses.get(status, '')}".rstrip()


def _session_cookie(set_cookies: Sequence[str]) -> str:
    """name=value of VMware's session cookie among Set-Cookie headers, or ""."""
    for header in set_cookies:
        pair = header.split(";", 1)[0].strip()
        if pair.partition("=")[0].strip() == COOKIE:
            return pair
    return ""


def fetch_vmx(session: Session[Https]) -> Vmx:
    """The guest's .vmx, downloaded and parsed. This is also the login: the session cookie is set."""
    https = session.server
    data = session.read(https.vmx, _VMX_MAX)
    if len(data) == _VMX_MAX:
        raise bad_input(f"{https.url(https.vmx)}: {_VMX_MAX // 1024} KiB or more: too large to be a .vmx file")
    return read_vmx(data.decode("utf-8", errors="replace"), https.url(https.vmx))


def flat_extent(session: Session[S], desc_file: DsFile, where: str) -> tuple[DsFile, int]:
    """(the raw extent on the datastore, virtual size) of the disk whose descriptor is `desc_file`;
    `where` names the disk in messages."""
    server = session.server
    extent, vmdk_size = remote_extent(session.read(desc_file, DESCRIPTOR_MAX), where, "HTTPS")
    flat = DsFile(desc_file.datastore, posixpath.normpath(posixpath.join(posixpath.dirname(desc_file.path), extent)))
    size = session.size(flat)
    if size is None:
        raise bad_input(f"{where}: its extent {server.url(flat)} does not exist")
    if size != vmdk_size:
        raise bad_input(f"{where}: its extent {server.url(flat)} is {size} bytes, the descriptor says {vmdk_size}")
    return flat, vmdk_size


class CurlNbdkit(FailFastNbdkit):
    """nbdkit's curl plugin under the cow filter (outermost) and the retry filter (next to the plugin,
    so that a retried read reopens the connection to the host)."""

    def __init__(self, server: Server, sock: Path, log: Path, what: str, args: Sequence[str]) -> None:
        self.server = server
        super().__init__(sock, log, what, "curl", args, filters=["cow", "retry"])

    def refusal(self, error: str) -> V2VError:
        _, found, why = error.partition("cookie-script failed: ")
        if found:  # vmware_cookie's own line, which names the disk
            return V2VError(why, pb.ERROR_CODE_BAD_INPUT, detail=error)
        low = error.lower()
        if "401" in error or "unauthorized" in low:
            return V2VError(f"cannot serve {self.what}: authentication failed (nbdkit curl)", pb.ERROR_CODE_BAD_INPUT,
                            detail=error)
        if "certificate" in low or "ssl" in low:
            hint = " (accept any certificate with -io sslverify=false)" if self.server.verify else ""
            return V2VError(f"cannot serve {self.what}: certificate verify failed (nbdkit curl){hint}",
                            pb.ERROR_CODE_BAD_INPUT, detail=error)
        return super().refusal(error)


def serve_extents(session: Session[S], disks: Sequence[pb.SourceDisk], flats: Sequence[DsFile],
                  workdir: WorkDir, stack: ExitStack, renew_seconds: int) -> None:
    """Each disk's flat extent served on its in socket by nbdkit curl, with sessions of its own that
    it renews every `renew_seconds` (0: DEFAULT_RENEW_SECONDS), or, if the host gave `session` no
    cookie, the user and password file."""
    for disk, flat in zip(disks, flats, strict=True):
        what = f"disk {disk.index} ({disk.location})"
        server = CurlNbdkit(session.server, workdir.in_sock(disk.index), workdir.log(f"input-disk{disk.index}.log"),
                            what, session.curl_args(flat, what, renew_seconds or DEFAULT_RENEW_SECONDS))
        try:
            stack.enter_context(server)
        except V2VError as err:
            err.fill(disk=disk.index)
            raise


def renew_from_cli(a: InputArgs) -> int:
    """-io session-renew=SECS, or 0 (the default)."""
    value = a.io.value("session-renew")
    if value and not (value.isdigit() and int(value) > 0):
        raise V2VError(f"-io session-renew={value}: expected a number of seconds", pb.ERROR_CODE_BAD_INPUT,
                       step="open")
    return int(value or 0)


RENEW_HELP = f"renew the datastore session every SECS seconds (default {DEFAULT_RENEW_SECONDS}: 25 minutes)"


def https_from_cli(a: InputArgs) -> input_pb2.VmwareHttpsInput:
    """-i vmx -it https, and the .vmx half of -it vddk."""
    url = a.one()
    if not url.startswith("https://"):
        raise V2VError(f"-it {a.transport or 'https'}: expected https://[USER@]HOST[:PORT]/folder/PATH.vmx"
                       f"?dcPath=DATACENTER&dsName=DATASTORE, not {url}", pb.ERROR_CODE_BAD_INPUT, step="open")
    return input_pb2.VmwareHttpsInput(url=url, password_file=absolute(a.password_file),
                                      insecure=not a.io.switch("sslverify", True))


def _from_cli(a: InputArgs) -> input_pb2.VmwareHttpsInput:
    """-i vmx -it https: the .vmx's URL and the disks' session renewal (-it vddk has no such disks)."""
    options = https_from_cli(a)
    options.session_renew_seconds = renew_from_cli(a)
    return options


def _picks(a: InputArgs) -> bool:
    return a.transport == "https" or (not a.transport and a.files[:1] != [] and a.files[0].startswith("https://"))


@INPUTS.register("vmware_https")
class VmwareHttpsInput(InputPlugin[input_pb2.VmwareHttpsInput]):
    cli = InputCli("vmx", _from_cli, transports=["https"], picks=_picks,
                   files="-it https: https://[USER@]HOST/folder/PATH.vmx?dcPath=DC&dsName=DATASTORE (-ip FILE)",
                   io=[("sslverify=false", "-it https: accept any certificate (ESXi's self-signed one)"),
                       ("session-renew=SECS", f"-it https: {RENEW_HELP}")])

    def location(self, options: input_pb2.VmwareHttpsInput) -> str:
        return urlsplit(options.url).path

    def source_host(self, options: input_pb2.VmwareHttpsInput) -> str:
        return host_of(options.url)

    def open(self, options: input_pb2.VmwareHttpsInput, guest: str, workdir: WorkDir,
             stack: ExitStack) -> pb.Source:
        if not options.url:
            raise bad_input("-i vmx -it https: no https://.../folder/GUEST.vmx?dcPath=...&dsName=... URL given")
        https = Https.from_options(options)
        session = https.session()
        vmx = fetch_vmx(session)
        source = vmx.source()
        flats = []
        for i, d in enumerate(vmx.disks):
            flat, size = flat_extent(session, https.resolve(d.file_name), f"{https.url(https.vmx)}: disk {d.file_name}")
            flats.append(flat)
            source.disks.append(pb.SourceDisk(index=i, location=https.url(flat), format="raw", virtual_size=size,
                                              controller=d.controller))
        serve_extents(session, source.disks, flats, workdir, stack, options.session_renew_seconds)
        return source
