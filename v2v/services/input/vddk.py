"""-i vmx -it vddk: a VMware guest whose .vmx is read over HTTPS (vmware_https) and whose disks are
read through VMware's VDDK library by nbdkit's vddk plugin, as virt-v2v's -it vddk does. VDDK reads
every kind of VMDK (sparse, snapshots) and may use faster transports (nbdssl, SAN, hotadd).

Neither part ships with Debian: nbdkit's vddk plugin must be built, and VDDK itself comes from VMware
under its own license. Both are checked before anything else, so a host without them says so in one
line instead of failing halfway."""

from __future__ import annotations

import subprocess
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from v2v.errors import V2VError
from v2v.nbdclient import export_size
from v2v.nbdserver import FailFastNbdkit
from v2v.plugins import InputArgs, InputCli
from v2v.services.input.base import INPUTS, InputPlugin, absolute, host_of
from v2v.services.input.vmware_https import DsFile, Https, fetch_vmx, https_from_cli
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

# VDDK keeps its libraries in lib64/ under the directory it is unpacked in (lib32/ on 32-bit hosts);
# nbdkit takes that directory as libdir=.
_LIB_DIRS = ("lib64", "")
_LIBRARY = "libvixDiskLib.so"
_DUMP_TIMEOUT = 30


def _plugin_missing() -> str:
    """"" when nbdkit has a vddk plugin (it loads without VDDK: the library is opened at the first
    connection), else why not."""
    try:
        res = subprocess.run(["nbdkit", "vddk", "--dump-plugin"], capture_output=True, text=True,
                             timeout=_DUMP_TIMEOUT, check=False)
    except FileNotFoundError:
        return "nbdkit is not installed"
    except subprocess.TimeoutExpired:
        return "nbdkit vddk --dump-plugin did not finish"
    return "" if res.returncode == 0 else "nbdkit has no vddk plugin (nbdkit vddk --dump-plugin fails)"


def _library_missing(libdir: str) -> str:
    """"" when `libdir` holds VDDK's libvixDiskLib.so, else why not."""
    if not libdir:
        return "no -io vddk-libdir= given"
    top = Path(libdir)
    if not top.is_dir():
        return f"{libdir}: no such directory"
    if any(any((top / sub).glob(f"{_LIBRARY}*")) for sub in _LIB_DIRS):
        return ""
    return f"no {_LIBRARY} in {top / _LIB_DIRS[0]}"


def check_available(libdir: str) -> None:
    """Raises UNSUPPORTED unless both nbdkit's vddk plugin and VDDK's library are here."""
    why = [w for w in (_plugin_missing(), _library_missing(libdir)) if w]
    if why:
        raise V2VError(f"-it vddk needs nbdkit's vddk plugin and VMware's VDDK library ({_LIBRARY} in "
                       f"-io vddk-libdir={libdir or 'DIR'}): not found here: {'; '.join(why)}",
                       pb.ERROR_CODE_UNSUPPORTED)


def vmdk_path(f: DsFile) -> str:
    """A datastore file as VMware names it: "[datastore1] guest/guest.vmdk"."""
    return f"[{f.datastore}] {f.path}"


def vddk_args(options: input_pb2.VddkInput, https: Https, vmdk: str) -> list[str]:
    """nbdkit vddk's parameters for one disk (the descriptor's datastore path, not its extent: VDDK
    reads the VMDK itself). The password goes by file, never on the command line."""
    args = [f"libdir={options.libdir}", f"server={https.host}", f"user={https.user or 'root'}",
            f"password=+{https.password_file}", f"thumbprint={options.thumbprint}", f"vm=moref={options.moref}",
            f"file={vmdk}"]
    if options.port:
        args.append(f"port={options.port}")
    for key in ("transports", "config", "nfchostport", "snapshot"):
        if value := getattr(options, key):
            args.append(f"{key}={value}")
    return args


class VddkNbdkit(FailFastNbdkit):
    """nbdkit's vddk plugin with, as virt-v2v stacks them, retry next to the plugin, cacheextents
    (qemu asks the same extents again and again; VDDK answers them slowly) and cow outermost."""

    def __init__(self, sock: Path, log: Path, what: str, args: list[str]) -> None:
        super().__init__(sock, log, what, "vddk", args, filters=["cow", "cacheextents", "retry"])

    def refusal(self, error: str) -> V2VError:
        low = error.lower()
        if any(w in low for w in ("password", "login", "thumbprint", "cannot connect", "certificate")):
            return V2VError(f"VDDK refused {self.what}: {error}", pb.ERROR_CODE_BAD_INPUT, detail=error)
        return super().refusal(error)


def _from_cli(a: InputArgs) -> input_pb2.VddkInput:
    port = a.io.value("vddk-port")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise V2VError(f"-io vddk-port={port}: not a port number", pb.ERROR_CODE_BAD_INPUT, step="open")
    return input_pb2.VddkInput(
        https=https_from_cli(a), libdir=absolute(a.io.value("vddk-libdir")), thumbprint=a.io.value("vddk-thumbprint"),
        moref=a.io.value("vddk-moref"), transports=a.io.value("vddk-transports"),
        config=absolute(a.io.value("vddk-config")), nfchostport=a.io.value("vddk-nfchostport"), port=int(port or 0),
        snapshot=a.io.value("vddk-snapshot"))


@INPUTS.register("vddk")
class VddkInput(InputPlugin[input_pb2.VddkInput]):
    cli = InputCli("vmx", _from_cli, transports=["vddk"], picks=lambda a: a.transport == "vddk",
                   files="-it vddk: the .vmx's https:// URL as -it https; the disks through VDDK",
                   io=[("sslverify=false", "-it vddk: accept any certificate for the .vmx"),
                       ("vddk-libdir=DIR", "where VDDK is unpacked (holds lib64/libvixDiskLib.so.N)"),
                       ("vddk-thumbprint=SHA1", "the server certificate's SHA1 fingerprint"),
                       ("vddk-moref=vm-NNN", "the VM's managed object reference"),
                       ("vddk-transports=T:T", "VDDK's transports in order, e.g. nbdssl:nbd"),
                       ("vddk-config=FILE", "a VDDK configuration file"),
                       ("vddk-nfchostport=PORT", "VDDK's nfchostport"),
                       ("vddk-port=PORT", "the server's port when not 443"),
                       ("vddk-snapshot=snapshot-NNN", "read this snapshot")])

    def location(self, options: input_pb2.VddkInput) -> str:
        return urlsplit(options.https.url).path

    def source_host(self, options: input_pb2.VddkInput) -> str:
        return host_of(options.https.url)

    def open(self, options: input_pb2.VddkInput, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
        check_available(options.libdir)
        if not options.https.url:
            raise V2VError("-i vmx -it vddk: no https://.../folder/GUEST.vmx?dcPath=...&dsName=... URL given",
                           pb.ERROR_CODE_BAD_INPUT)
        for value, option, what in ((options.thumbprint, "vddk-thumbprint", "SHA1 fingerprint of the server's "
                                     "certificate, xx:xx:..."), (options.moref, "vddk-moref", "vm-NNN")):
            if not value:
                raise V2VError(f"-it vddk needs -io {option}= ({what})", pb.ERROR_CODE_BAD_INPUT)
        if not options.https.password_file:
            raise V2VError("-it vddk needs the password in a file (-ip FILE)", pb.ERROR_CODE_BAD_INPUT)
        https = Https.from_options(options.https)
        vmx = fetch_vmx(https.session())
        source = vmx.source()
        for i, d in enumerate(vmx.disks):
            vmdk = vmdk_path(https.resolve(d.file_name))
            sock = workdir.in_sock(i)
            server = VddkNbdkit(sock, workdir.log(f"input-disk{i}.log"), f"disk {i} ({vmdk})",
                                vddk_args(options, https, vmdk))
            try:
                stack.enter_context(server)
            except V2VError as err:
                err.fill(disk=i)
                raise
            # VDDK knows the size of every kind of VMDK: ask the export rather than the descriptor
            source.disks.append(pb.SourceDisk(index=i, location=vmdk, format="raw", virtual_size=export_size(str(sock)),
                                              controller=d.controller))
        return source
