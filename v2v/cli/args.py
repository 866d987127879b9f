"""The conversion command line (virt-v2v's options) and the typed GuestJob it means: the one
parser every command borrows its input and conversion options from."""

from __future__ import annotations

import argparse
import os
from types import FrameType

from v2v.cli.inputs import BUILDERS as INPUT_BUILDERS
from v2v.cli.inputs import InputArgs, input_spec
from v2v.cli.options import Options
from v2v.cli.outputs import BUILDERS, DIRECTORY_OUTPUTS, output_spec
from v2v.errors import V2VError
from v2v.networks import parse_mac, parse_network
from v2v.tls import add_tls_argument
from v2v.v1 import convert_pb2, coordinator_pb2, copier_pb2, output_pb2
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
    p.add_argument("-i", dest="input", choices=sorted(INPUT_BUILDERS), default="disk",
                   help="input type (default: disk)")
    p.add_argument("-ic", dest="input_uri", default="", metavar="URI",
                   help="-i libvirt: the libvirt connection (default qemu:///system)")
    p.add_argument("-if", dest="input_format", default="", metavar="FORMAT",
                   help="-i disk: the disks' format (raw, qcow2, vmdk, ...); default: detect")
    p.add_argument("-it", dest="input_transport", default="", metavar="TRANSPORT",
                   help="how to reach the input: ssh (-i vmx ssh://USER@HOST/PATH.vmx)")
    p.add_argument("-io", dest="input_options", action="append", default=[], metavar="OPTION",
                   help="an input option: ova-checksums=off, vmx-identity=KEYFILE, vmx-known-hosts=off")
    p.add_argument("-ip", dest="input_password", default="", metavar="FILE",
                   help="a file holding the input's password (-it ssh)")
    p.add_argument("-o", dest="output", choices=sorted(BUILDERS), default="local", help="output type")
    p.add_argument("-os", dest="output_storage", metavar="STORAGE",
                   help="output storage: a directory (-o local, qemu, json, kubevirt) or a pool (-o libvirt)")
    p.add_argument("-oc", dest="output_uri", default="", metavar="URI", help="-o libvirt: the libvirt URI")
    p.add_argument("-oo", dest="output_options", action="append", default=[], metavar="OPTION",
                   help="an output option: compressed, qemu-boot, domain-type=, pvc-prefix=, disk=, "
                        "data-volumes, json-disks-pattern= (as the output type takes)")
    p.add_argument("--overwrite", action="store_true", help="replace existing target files instead of refusing")
    p.add_argument("-n", "--network", dest="networks", action="append", default=[], metavar="[IN:]OUT",
                   help="map source network IN (default: every network) to target network OUT")
    p.add_argument("-b", "--bridge", dest="bridges", action="append", default=[], metavar="[IN:]OUT",
                   help="map source network IN (default: every network) to target bridge OUT")
    p.add_argument("--mac", dest="macs", action="append", default=[], metavar="MAC:network|bridge|ip:...",
                   help="map one NIC by MAC: MAC:network:OUT, MAC:bridge:OUT, or keep its address: "
                        "MAC:ip:ADDR,GATEWAY,PREFIXLEN,NAMESERVER...")
    p.add_argument("-of", dest="output_format", choices=("raw", "qcow2"), default="raw", help="output disk format")
    p.add_argument("-oa", dest="output_alloc", choices=("sparse", "preallocated"), default="sparse",
                   help="output allocation")
    p.add_argument("-on", dest="output_name", default="", metavar="NAME", help="rename the guest on the target")
    p.add_argument("--root", default="ask", metavar="ask|single|first|/dev/X",
                   help="which OS to convert when the disks hold several (ask = single: fail and list them)")
    p.add_argument("--block-driver", choices=sorted(BLOCK_DRIVERS), default="virtio-blk",
                   help="the converted guest's disk bus when its kernel has virtio (virtio-scsi keeps sdX names)")
    p.add_argument("--virtio-win", default=os.environ.get("VIRTIO_WIN") or os.environ.get("VIRTIO_WIN_DIR", ""),
                   metavar="DIR|ISO", help="Windows: the virtio-win drivers, a directory or an ISO ($VIRTIO_WIN; "
                                          "default /usr/share/virtio-win/virtio-win.iso, else that directory), on "
                                          "the convert service's host")
    p.add_argument("--virt-tools-dir", default=os.environ.get("VIRT_TOOLS_DATA_DIR", ""), metavar="DIR",
                   help="Windows: where the first-boot service rhsrvany.exe or pvvxsvc.exe is "
                        "($VIRT_TOOLS_DATA_DIR; default /usr/share/virt-tools)")
    p.add_argument("--print-source", action="store_true", help="print the parsed source and exit")
    p.add_argument("--machine-readable", action="store_true", help="one JSON object per event on stdout")
    p.add_argument("--parallel", type=int, default=0, metavar="N", help="disks copied at once (default: all)")
    p.add_argument("--verify", action="store_true",
                   help="after copying, read every disk back and compare it with its source (fails on a difference)")
    p.add_argument("--copy-while-converting", action="store_true",
                   help="copy the disks while the conversion runs, then again only what it wrote (docs/copy.md)")
    p.add_argument("--accel", choices=sorted(ACCELERATORS), default=os.environ.get("V2V_ACCEL", "auto"),
                   help="how the conversion appliance runs: kvm, tcg (software) or auto (default; $V2V_ACCEL)")
    p.add_argument("--coordinator", default=os.environ.get("V2V_COORDINATOR", ""), metavar="ADDR",
                   help="use this coordinator (unix:PATH or HOST:PORT; $V2V_COORDINATOR) "
                        "instead of starting the services in this process")
    add_tls_argument(p, "client")
    p.add_argument("-v", "--verbose", action="store_true", help="verbose: libguestfs messages in the logs")
    p.add_argument("-x", dest="trace", action="store_true", help="trace libguestfs calls in the logs")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="the input: disk images or NBD URIs (-i disk), an .ova, a .vmx or ssh:// URI, a domain XML "
                        "(-i libvirtxml), a guest's name (-i libvirt)")
    return p


def root_choice(text: str) -> convert_pb2.RootChoice:
    if text in ("ask", "single"):
        return convert_pb2.RootChoice(single=True)
    if text == "first":
        return convert_pb2.RootChoice(first=True)
    if text.startswith("/dev/"):
        return convert_pb2.RootChoice(device=text)
    raise V2VError(f"--root {text}: expected ask, single, first or /dev/DEVICE", pb.ERROR_CODE_BAD_INPUT)


# --block-driver: virt-v2v's names.
BLOCK_DRIVERS = {"virtio-blk": pb.BLOCK_BUS_VIRTIO_BLK, "virtio-scsi": pb.BLOCK_BUS_VIRTIO_SCSI}


def service_path(path: str) -> str:
    """A path the services read: absolute, as they do not share the command's directory."""
    return os.path.abspath(path) if path else ""


def build_job(a: argparse.Namespace) -> coordinator_pb2.GuestJob:
    """The command line as the typed job the coordinator takes: nothing is re-parsed later."""
    job = coordinator_pb2.GuestJob(print_source=a.print_source)
    job.input.CopyFrom(input_spec(InputArgs(a.input, a.files, a.input_format, a.input_uri, a.input_transport,
                                            a.input_password, Options("-io", "", a.input_options))))
    job.convert.CopyFrom(convert_pb2.ConvertOptions(accelerator=ACCELERATORS[a.accel], root=root_choice(a.root),
                                                    verbose=a.verbose, trace=a.trace,
                                                    block_driver=BLOCK_DRIVERS[a.block_driver],
                                                    virtio_win=service_path(a.virtio_win),
                                                    virt_tools_dir=service_path(a.virt_tools_dir)))
    if not a.print_source:
        storage = a.output_storage
        if storage and a.output in DIRECTORY_OUTPUTS:
            storage = os.path.abspath(storage)
        alloc = output_pb2.ALLOCATION_PREALLOCATED if a.output_alloc == "preallocated" else output_pb2.ALLOCATION_SPARSE
        job.output.CopyFrom(output_spec(a.output, storage, a.output_uri, a.output_options, name=a.output_name,
                                        format=a.output_format, allocation=alloc, overwrite=a.overwrite))
    job.networks.mappings.extend([parse_network(n, pb.NETWORK_TYPE_NETWORK) for n in a.networks]
                                 + [parse_network(b, pb.NETWORK_TYPE_BRIDGE) for b in a.bridges])
    for text in a.macs:
        mac = parse_mac(text)
        if isinstance(mac, pb.StaticIp):
            job.networks.static_ips.append(mac)
        else:
            job.networks.mappings.append(mac)
    job.copy.CopyFrom(copier_pb2.CopyOptions(parallel=max(a.parallel, 0), verify=a.verify,
                                             while_converting=a.copy_while_converting))
    return job


def terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
