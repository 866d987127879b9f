"""-o null: every disk goes to nbdkit's null plugin, which throws the data away. For measuring the
rest of the pipeline, and for testing."""

from __future__ import annotations

from contextlib import ExitStack

from v2v.drives import device_name, target_bus
from v2v.nbdserver import Nbdkit
from v2v.plugins import OutputArgs, OutputCli
from v2v.services.output.base import OUTPUTS, OutputPlugin
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir


def _from_cli(a: OutputArgs) -> output_pb2.NullOutput:
    return output_pb2.NullOutput()


@OUTPUTS.register("null")
class NullOutput(OutputPlugin):
    cli = OutputCli(["null"], _from_cli)

    target_is_zero = True

    def check(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta) -> None:
        pass  # nothing can be in the way of nothing

    def setup(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir, stack: ExitStack) -> None:
        bus = target_bus(target.caps)
        for d in target.source.disks:
            target.disks.append(pb.TargetDisk(index=d.index, format="raw", virtual_size=d.virtual_size,
                                              device=device_name(bus, d.index), bus=bus))
            stack.enter_context(Nbdkit(workdir.out_sock(d.index), workdir.log(f"output-disk{d.index}.log"),
                                       f"null disk {d.index}", "null", [f"size={d.virtual_size}"]))

    def finalize(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir) -> list[str]:
        return []

    def abort(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir) -> None:
        pass
