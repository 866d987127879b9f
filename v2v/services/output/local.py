"""-o local (alias disk): the disks plus NAME.xml, a libvirt domain describing the guest."""

from __future__ import annotations

from pathlib import Path

from v2v.plugins import OutputArgs, OutputCli
from v2v.services.output.base import OUTPUTS
from v2v.services.output.files import FileOutput
from v2v.services.output.libvirtxml import domain_xml
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb


def _from_cli(a: OutputArgs) -> output_pb2.LocalOutput:
    return output_pb2.LocalOutput(directory=a.directory())


@OUTPUTS.register("local")
class LocalOutput(FileOutput):
    cli = OutputCli(["local", "disk"], _from_cli, directory=True)

    extension = "xml"

    def descriptions(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, directory: Path) -> dict[str, str]:
        return {f"{target.name}.xml": domain_xml(target, list(target.disks))}
