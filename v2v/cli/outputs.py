"""The command line's output options (-o, -os, -oc, -oo) as the typed OutputSpec of each output.

One builder per output type; a new output adds its builder here and its plugin in the service."""

from __future__ import annotations

from collections.abc import Callable

from v2v.cli.options import Options
from v2v.errors import V2VError
from v2v.steps import Step
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb


def _directory(kind: str, storage: str | None) -> str:
    if not storage:
        raise V2VError(f"-o {kind}: give the output directory with -os DIR", pb.ERROR_CODE_BAD_INPUT, step=Step.CHECK)
    return storage


def _local(spec: output_pb2.OutputSpec, storage: str | None, uri: str, oo: Options) -> None:
    spec.local.directory = _directory("local", storage)


def _libvirt(spec: output_pb2.OutputSpec, storage: str | None, uri: str, oo: Options) -> None:
    spec.libvirt.CopyFrom(output_pb2.LibvirtOutput(uri=uri, pool=storage or "", domain_type=oo.value("domain-type")))


def _qemu(spec: output_pb2.OutputSpec, storage: str | None, uri: str, oo: Options) -> None:
    spec.qemu.CopyFrom(output_pb2.QemuOutput(directory=_directory("qemu", storage), boot=oo.flag("qemu-boot")))


def _kubevirt(spec: output_pb2.OutputSpec, storage: str | None, uri: str, oo: Options) -> None:
    spec.kubevirt.CopyFrom(output_pb2.KubevirtOutput(
        directory=_directory("kubevirt", storage), pvc_prefix=oo.value("pvc-prefix"), disk_claims=oo.values("disk"),
        data_volumes=oo.flag("data-volumes")))


def _json(spec: output_pb2.OutputSpec, storage: str | None, uri: str, oo: Options) -> None:
    spec.json.CopyFrom(output_pb2.JsonOutput(directory=_directory("json", storage),
                                             disks_pattern=oo.value("json-disks-pattern")))


def _null(spec: output_pb2.OutputSpec, storage: str | None, uri: str, oo: Options) -> None:
    spec.null.SetInParent()


Builder = Callable[[output_pb2.OutputSpec, "str | None", str, Options], None]

# -o NAME -> builder. Paths in -os are made absolute by the caller (directories) where needed.
BUILDERS: dict[str, Builder] = {
    "local": _local, "disk": _local, "libvirt": _libvirt, "qemu": _qemu, "kubevirt": _kubevirt,
    "json": _json, "null": _null,
}
# Outputs whose -os is a directory on this machine (the others: a pool name, or nothing).
DIRECTORY_OUTPUTS = {"local", "disk", "qemu", "kubevirt", "json"}


def output_spec(kind: str, storage: str | None, uri: str, raw_oo: list[str], **common: object) -> output_pb2.OutputSpec:
    spec = output_pb2.OutputSpec(**common)  # type: ignore[arg-type]
    oo = Options("-oo", f"-o {kind}", raw_oo)
    spec.compressed = oo.flag("compressed")
    BUILDERS[kind](spec, storage, uri, oo)
    oo.done()
    return spec
