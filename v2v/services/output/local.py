"""-o local (alias disk): the disks plus NAME.xml, a libvirt domain describing the guest."""

from __future__ import annotations

from pathlib import Path

from v2v.services.output.base import OUTPUTS
from v2v.services.output.files import FileOutput
from v2v.services.output.libvirtxml import domain_xml
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb


@OUTPUTS.register("local")
class LocalOutput(FileOutput):
    extension = "xml"

    def descriptions(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, directory: Path) -> dict[str, str]:
        return {f"{target.name}.xml": domain_xml(target, list(target.disks))}
