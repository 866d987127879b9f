"""The conversion command line (virt-v2v's options) and the typed GuestJob it means: the one
parser every command borrows its input and conversion options from."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from types import FrameType

from v2v.cli.inputs import files_help, input_clis, input_spec, io_help
from v2v.cli.outputs import directory_outputs, oo_help, output_clis, output_spec
from v2v.errors import V2VError
from v2v.networks import parse_mac, parse_network
from v2v.options import Options
from v2v.plugins import InputArgs
from v2v.tls import add_tls_argument
from v2v.v1 import convert_pb2, coordinator_pb2, copier_pb2, output_pb2, verify_pb2
from v2v.v1 import types_pb2 as pb

ACCELERATORS = {"auto": convert_pb2.ACCELERATOR_AUTO, "kvm": convert_pb2.ACCELERATOR_KVM,
                "tcg": convert_pb2.ACCELERATOR_TCG}


def conversion_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="v2v", description="Convert a guest from a foreign hypervisor to run on KVM.",
        epilog="Also: v2v open ... --run 'PROG @@' (the input alone), v2v inspect ... (input + inspection), "
               "v2v --in-place ... (convert the disks where they are), "
               "v2v verify-boot DISK... (does a KVM guest boot?), "
               "v2v serve {input,convert,output,copier,verify,coordinator} --listen ADDR (one service), "
               "v2v certs DIR (a CA and mutual TLS certificates)",
    )
    p.add_argument("-i", dest="input", choices=list(input_clis()), default="disk",
                   help="input type (default: disk)")
    p.add_argument("-ic", dest="input_uri", default="", metavar="URI",
                   help="-i libvirt: the libvirt connection (default qemu:///system)")
    p.add_argument("-if", dest="input_format", default="", metavar="FORMAT",
                   help="-i disk: the disks' format (raw, qcow2, vmdk, ...); default: detect")
    p.add_argument("-it", dest="input_transport", default="", metavar="TRANSPORT",
                   help="how to reach the input: " + "; ".join(
                       f"-i {name}: {', '.join(t for _, cli in group for t in cli.transports)}"
                       for name, group in input_clis().items() if any(cli.transports for _, cli in group)))
    p.add_argument("-io", dest="input_options", action="append", default=[], metavar="OPTION",
                   help="an input option KEY[=VALUE] of the input type (-io ? lists them)")
    p.add_argument("-ip", dest="input_password", default="", metavar="FILE",
                   help="a file holding the input's password (-it ssh)")
    p.add_argument("-o", dest="output", choices=list(output_clis()), default="local", help="output type")
    p.add_argument("-os", dest="output_storage", metavar="STORAGE",
                   help=f"output storage: a directory (-o {', '.join(directory_outputs())}) or a pool (-o libvirt)")
    p.add_argument("-oc", dest="output_uri", default="", metavar="URI", help="-o libvirt: the libvirt URI")
    p.add_argument("-oo", dest="output_options", action="append", default=[], metavar="OPTION",
                   help="an output option KEY[=VALUE] of the output type (-oo ? lists them)")
    p.add_argument("--overwrite", action="store_true", help="replace existing target files instead of refusing")
    p.add_argument("-n", "--network", dest="networks", action="append", default=[], metavar="[IN:]OUT",
                   help="map source network IN (default: every network) to target network OUT")
    p.add_argument("-b", "--bridge", dest="bridges", action="append", default=[], metavar="[IN:]OUT",
                   help="map source network IN (default: every network) to target bridge OUT")
    p.add_argument("--mac", dest="macs", action="append", default=[], metavar="MAC:network|bridge|ip:...",
                   help="map one NIC by MAC: MAC:network:OUT, MAC:bridge:OUT, or keep its address: "
                        "MAC:ip:ADDR,GATEWAY,PREFIXLEN,NAMESERVER...")
    p.add_argument("-of", dest="output_format", choices=FORMATS, default="raw", help="output disk format")
    p.add_argument("-oa", dest="output_alloc", choices=ALLOCATIONS, default="sparse",
                   help="output allocation")
    p.add_argument("-on", dest="output_name", default="", metavar="NAME", help="rename the guest on the target")
    p.add_argument("--root", default="ask", metavar="ask|single|first|/dev/X",
                   help="which OS to convert when the disks hold several (ask = single: fail and list them)")
    p.add_argument("--key", dest="keys", action="append", default=[], metavar="SELECTOR",
                   help="open a LUKS-encrypted device (its name or LUKS UUID, or all) with the key in FILE, on the "
                        "convert service's host, or by Clevis: /dev/sda2:file:/root/sda2.key, all:file:FILE, "
                        "/dev/sda2:clevis")
    add_verify_boot(p)
    p.add_argument("--block-driver", choices=sorted(BLOCK_DRIVERS), default="virtio-blk",
                   help="the converted guest's disk bus when its kernel has virtio (virtio-scsi keeps sdX names)")
    p.add_argument("--virtio-win", default=default_virtio_win(),
                   metavar="DIR|ISO", help="Windows: the virtio-win drivers, a directory or an ISO ($VIRTIO_WIN; "
                                          "default /usr/share/virtio-win/virtio-win.iso, else that directory), on "
                                          "the convert service's host")
    p.add_argument("--virt-tools-dir", default=default_virt_tools_dir(), metavar="DIR",
                   help="Windows: where the first-boot service rhsrvany.exe or pvvxsvc.exe is "
                        "($VIRT_TOOLS_DATA_DIR; default /usr/share/virt-tools)")
    p.add_argument("--print-source", action="store_true", help="print the parsed source and exit")
    p.add_argument("--machine-readable", action="store_true", help="one JSON object per event on stdout")
    p.add_argument("--parallel", type=int, default=0, metavar="N", help="disks copied at once (default: all)")
    p.add_argument("--verify", action="store_true",
                   help="after copying, read every disk back and compare it with its source (fails on a difference)")
    p.add_argument("--copy-while-converting", action="store_true",
                   help="copy the disks while the conversion runs, then again only what it wrote (docs/copy.md)")
    p.add_argument("--accel", choices=sorted(ACCELERATORS), default=default_accel(),
                   help="how the conversion appliance runs: kvm, tcg (software) or auto (default; $V2V_ACCEL)")
    p.add_argument("--coordinator", default=os.environ.get("V2V_COORDINATOR", ""), metavar="ADDR",
                   help="use this coordinator (unix:PATH or HOST:PORT; $V2V_COORDINATOR) "
                        "instead of starting the services in this process")
    add_tls_argument(p, "client")
    p.add_argument("-v", "--verbose", action="store_true", help="verbose: libguestfs messages in the logs")
    p.add_argument("-x", dest="trace", action="store_true", help="trace libguestfs calls in the logs")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help=f"the input: {files_help()}")
    return p


def root_choice(text: str) -> convert_pb2.RootChoice:
    if text in ("ask", "single"):
        return convert_pb2.RootChoice(single=True)
    if text == "first":
        return convert_pb2.RootChoice(first=True)
    if text.startswith("/dev/"):
        return convert_pb2.RootChoice(device=text)
    raise V2VError(f"--root {text}: expected ask, single, first or /dev/DEVICE", pb.ERROR_CODE_BAD_INPUT)


def luks_key(text: str) -> convert_pb2.LuksKey:
    """--key SELECTOR: virt-v2v's ID:file:FILE and ID:clevis (ID a device, a LUKS UUID or `all`).
    ID:key:STRING is refused: a key on the command line is in every user's `ps` and in the request
    the fleet's state database keeps."""
    selector, _, rest = text.partition(":")
    kind, _, value = rest.partition(":")
    device = "" if selector == "all" else selector
    if selector and kind == "file" and value:
        return convert_pb2.LuksKey(device=device, file=service_path(value))
    if selector and kind == "clevis" and not value:
        return convert_pb2.LuksKey(device=device, clevis=True)
    if selector and kind == "key":
        raise V2VError(f"--key {selector}:key:...: a key on the command line is visible to every user (ps) and "
                       f"kept in requests: put it in a file and give --key {selector}:file:FILE",
                       pb.ERROR_CODE_BAD_INPUT)
    raise V2VError(f"--key {text}: expected DEVICE:file:FILE, all:file:FILE or DEVICE:clevis",
                   pb.ERROR_CODE_BAD_INPUT)


# --verify-boot[=strict]
VERIFY_BOOT = {"": verify_pb2.VERIFY_MODE_UNSPECIFIED, "basic": verify_pb2.VERIFY_MODE_BASIC,
               "strict": verify_pb2.VERIFY_MODE_STRICT}
# --block-driver: virt-v2v's names.
BLOCK_DRIVERS = {"virtio-blk": pb.BLOCK_BUS_VIRTIO_BLK, "virtio-scsi": pb.BLOCK_BUS_VIRTIO_SCSI}


def add_verify_boot(p: argparse.ArgumentParser) -> None:
    """--verify-boot[=strict], for a conversion and for a warm cutover."""
    p.add_argument("--verify-boot", nargs="?", const="basic", default="", choices=sorted(k for k in VERIFY_BOOT if k),
                   help="after the conversion, boot the target once on throw-away overlays and fail the guest if it "
                        "does not come up (strict: also its NIC names, addresses and mounts; docs/verify.md)")


def service_path(path: str) -> str:
    """A path the services read: absolute, as they do not share the command's directory."""
    return os.path.abspath(path) if path else ""


# -of, -oa: the choices of the options that are not plugins' (a plan's keys are checked against them too)
FORMATS = {"raw": "raw", "qcow2": "qcow2"}
ALLOCATIONS = {"sparse": output_pb2.ALLOCATION_SPARSE, "preallocated": output_pb2.ALLOCATION_PREALLOCATED}


def default_accel() -> str:
    return os.environ.get("V2V_ACCEL", "auto")


def default_virtio_win() -> str:
    return os.environ.get("VIRTIO_WIN") or os.environ.get("VIRTIO_WIN_DIR", "")


def default_virt_tools_dir() -> str:
    return os.environ.get("VIRT_TOOLS_DATA_DIR", "")


def input_args(a: argparse.Namespace) -> InputArgs:
    """The input options of a command line (its own or borrowed), for the input plugin to read."""
    return InputArgs(a.input, a.files, a.input_format, a.input_uri, a.input_transport, a.input_password,
                     Options("-io", "", a.input_options))


@dataclass
class JobArgs:
    """What a GuestJob is built from, one field per conversion option, as the command line (its
    argparse dests) or a fleet plan's keys give it; the input's own arguments go to its plugin."""

    input: InputArgs
    output: str = "local"  # -o
    output_storage: str = ""  # -os
    output_uri: str = ""  # -oc
    output_options: list[str] = field(default_factory=list)  # -oo
    output_format: str = "raw"  # -of, one of FORMATS
    output_alloc: str = "sparse"  # -oa, one of ALLOCATIONS
    output_name: str = ""  # -on
    overwrite: bool = False
    accel: str = field(default_factory=default_accel)  # one of ACCELERATORS
    root: str = "ask"
    keys: list[str] = field(default_factory=list)  # --key
    verbose: bool = False
    trace: bool = False
    block_driver: str = "virtio-blk"  # one of BLOCK_DRIVERS
    virtio_win: str = field(default_factory=default_virtio_win)
    virt_tools_dir: str = field(default_factory=default_virt_tools_dir)
    networks: list[str] = field(default_factory=list)  # -n
    bridges: list[str] = field(default_factory=list)  # -b
    macs: list[str] = field(default_factory=list)  # --mac
    parallel: int = 0
    verify: bool = False
    verify_boot: str = ""  # one of VERIFY_BOOT
    copy_while_converting: bool = False
    print_source: bool = False

    @classmethod
    def from_namespace(cls, a: argparse.Namespace) -> JobArgs:
        fields = {f.name for f in dataclasses.fields(cls)} - {"input"}
        return cls(input_args(a), **{k: getattr(a, k) for k in fields})

    def job(self) -> coordinator_pb2.GuestJob:
        """The typed job the coordinator takes: nothing is re-parsed later."""
        job = coordinator_pb2.GuestJob(print_source=self.print_source, verify_boot=VERIFY_BOOT[self.verify_boot])
        job.input.CopyFrom(input_spec(self.input))
        job.convert.CopyFrom(convert_pb2.ConvertOptions(
            accelerator=ACCELERATORS[self.accel], root=root_choice(self.root), verbose=self.verbose, trace=self.trace,
            block_driver=BLOCK_DRIVERS[self.block_driver], virtio_win=service_path(self.virtio_win),
            virt_tools_dir=service_path(self.virt_tools_dir), keys=[luks_key(k) for k in self.keys]))
        if not self.print_source:
            job.output.CopyFrom(output_spec(self.output, self.output_storage, self.output_uri, self.output_options,
                                            name=self.output_name, format=FORMATS[self.output_format],
                                            allocation=ALLOCATIONS[self.output_alloc], overwrite=self.overwrite))
        job.networks.mappings.extend([parse_network(n, pb.NETWORK_TYPE_NETWORK) for n in self.networks]
                                     + [parse_network(b, pb.NETWORK_TYPE_BRIDGE) for b in self.bridges])
        for text in self.macs:
            mac = parse_mac(text)
            if isinstance(mac, pb.StaticIp):
                job.networks.static_ips.append(mac)
            else:
                job.networks.mappings.append(mac)
        job.copy.CopyFrom(copier_pb2.CopyOptions(parallel=max(self.parallel, 0), verify=self.verify,
                                                 while_converting=self.copy_while_converting))
        return job


def build_job(a: argparse.Namespace) -> coordinator_pb2.GuestJob:
    """The command line as the typed job the coordinator takes."""
    return JobArgs.from_namespace(a).job()


def answer_plugin_help(a: argparse.Namespace) -> None:
    """`-io ?` and `-oo ?` (virt-v2v's): print the options the input (output) type takes and exit,
    as --help does. Borrowed command lines may have only the input options."""
    answers = [io_help(a.input)] if "?" in getattr(a, "input_options", []) else []
    answers += [oo_help(a.output)] if "?" in getattr(a, "output_options", []) else []
    if answers:
        print("\n\n".join(answers))
        raise SystemExit(0)


def terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
