"""-i disk: one or more local disk images, or existing NBD endpoints (nbd://, nbd+unix:// URIs).
The metadata is what virt-v2v assumes for -i disk:
named after the first file, 2 GiB, 1 vCPU, one NIC on the "default" network."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from v2v.errors import V2VError
from v2v.naming import name_from_path
from v2v.plugins import InputArgs, InputCli
from v2v.services.input.base import INPUTS, InPlaceInput, absolute
from v2v.services.input.diskfile import is_nbd_uri, probe, probe_nbd, serve_all
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir

GiB = 1024**3



def _from_cli(a: InputArgs) -> input_pb2.DiskInput:
    return input_pb2.DiskInput(paths=[f if "://" in f else absolute(f) for f in a.files], format=a.format)


@INPUTS.register("disk")
class DiskInput(InPlaceInput[input_pb2.DiskInput]):
    cli = InputCli("disk", _from_cli, files="disk images or NBD URIs (nbd://, nbd+unix://; -if FORMAT)")

    def location(self, options: input_pb2.DiskInput) -> str:
        return options.paths[0] if options.paths else ""

    def open_disks(self, options: input_pb2.DiskInput, workdir: WorkDir, stack: ExitStack, in_place: bool) -> pb.Source:
        if not options.paths:
            raise V2VError("-i disk: no disk image given", pb.ERROR_CODE_BAD_INPUT)
        source = pb.Source(
            name=name_from_path(options.paths[0]),
            hypervisor=pb.HYPERVISOR_UNSPECIFIED,
            memory=2 * GiB,
            vcpus=1,
            nics=[pb.Nic(network="default", network_type=pb.NETWORK_TYPE_NETWORK)],
        )
        for i, path in enumerate(options.paths):
            disk = probe_nbd(path, options.format) if is_nbd_uri(path) else probe(Path(path).absolute(), options.format)
            disk.index = i
            source.disks.append(disk)
        serve_all(source.disks, workdir, stack, in_place)
        return source
