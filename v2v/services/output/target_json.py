"""-o json: the disks plus NAME.json, the open target description (docs/target-json.md): the
protobuf JSON of TargetMeta, versioned, for any tool to turn into its own format."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format

from v2v.drives import drive_letters
from v2v.errors import V2VError
from v2v.plugins import OutputArgs, OutputCli
from v2v.services.output.base import OUTPUTS
from v2v.services.output.files import FileOutput
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb

FORMAT = "v2v-target"
VERSION = 1


def target_json(target: pb.TargetMeta) -> str:
    doc = {"format": FORMAT, "version": VERSION,
           "target": json_format.MessageToDict(target, preserving_proto_field_name=True)}
    return json.dumps(doc, indent=2) + "\n"


def _from_cli(a: OutputArgs) -> output_pb2.JsonOutput:
    return output_pb2.JsonOutput(directory=a.directory(), disks_pattern=a.oo.value("json-disks-pattern"))


@OUTPUTS.register("json")
class JsonOutput(FileOutput):
    cli = OutputCli(["json"], _from_cli, directory=True,
                    oo=[("json-disks-pattern=PATTERN",
                         "where disk N goes: %{GuestName}, %{DiskNo}, %{DiskDeviceName} replaced")])

    extension = "json"

    def disk_path(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, directory: Path, index: int) -> Path:
        pattern = spec.json.disks_pattern or "%{GuestName}-%{DiskDeviceName}"
        name = (pattern.replace("%{GuestName}", target.name).replace("%{DiskNo}", str(index + 1))
                .replace("%{DiskDeviceName}", f"sd{drive_letters(index)}"))
        path = (directory / name).resolve()
        if directory.resolve() not in path.parents:
            raise V2VError(f"-oo json-disks-pattern={pattern}: disk {index} would go outside {directory}",
                           pb.ERROR_CODE_BAD_INPUT)
        return path

    def descriptions(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, directory: Path) -> dict[str, str]:
        return {f"{target.name}.json": target_json(target)}
