"""The output plugin interface: setup creates and serves the target disks, serve serves them again
(warm rounds), finalize describes the guest once they hold the data, abort removes what setup created."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import ExitStack
from typing import ClassVar

from v2v.errors import V2VError
from v2v.plugins import OutputCli, PluginRegistry
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb
from v2v.workdir import WorkDir


class OutputPlugin(ABC):
    """One output type (`-o NAME`). `setup` must register every process it starts on `stack`."""

    cli: ClassVar[OutputCli | None] = None  # how the command line and fleet plans reach it; None: the API only

    # Whether the disks setup creates read as zeros, so the copy may skip the source's zero ranges.
    target_is_zero: bool = False

    @abstractmethod
    def check(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta) -> None:
        """Refuses, before any work is done, what setup would refuse: bad options, a target that
        cannot be written or already exists. `target` has its name and source."""

    @abstractmethod
    def setup(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir,
              stack: ExitStack) -> None:
        """Creates disk N of target.source and serves it writable on workdir.out_sock(N).

        Appends each disk to target.disks as soon as it exists, before anything else can fail, so
        that abort(target) removes exactly what was created even when setup fails half-way."""

    def serve(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir, stack: ExitStack) -> None:
        """Serves the existing disks in target.disks (as setup made them) writable on
        workdir.out_sock(N) again, registering the servers on `stack`. Outputs whose disks cannot be
        reopened refuse it (the default)."""
        raise V2VError(f"-o {spec.WhichOneof('kind')} keeps no disks that can be served again",
                       pb.ERROR_CODE_UNSUPPORTED)

    @abstractmethod
    def finalize(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir) -> list[str]:
        """Writes the guest's description once the disks hold the data (their servers are stopped).
        Returns every file the output wrote, disks first."""

    @abstractmethod
    def abort(self, spec: output_pb2.OutputSpec, target: pb.TargetMeta, workdir: WorkDir) -> None:
        """Removes the disks in target.disks. Must not fail on what is already gone."""


OUTPUTS: PluginRegistry[OutputPlugin] = PluginRegistry("output", ("v2v.services.output", "v2v_plugins.output"))


def target_name(spec: output_pb2.OutputSpec, target: pb.TargetMeta) -> str:
    """The converted guest's name: -on, else what convert chose, else the source's. It names files
    and libvirt domains, so it must be usable as both."""
    name = spec.name or target.name or target.source.name
    if not name:
        raise V2VError("the guest has no name: give one with -on", pb.ERROR_CODE_BAD_INPUT)
    if "/" in name or "\0" in name or name in (".", ".."):
        raise V2VError(f"guest name {name!r} cannot be a file name: choose another with -on",
                       pb.ERROR_CODE_BAD_INPUT)
    return name
