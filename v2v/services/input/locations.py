"""Where a guest comes from, read off its InputSpec by the input's own plugin: what names it before
its metadata is read, and the host its disks are read from (the resource the per-source-host limit
protects)."""

from __future__ import annotations

from v2v.services.input.base import INPUTS
from v2v.v1 import input_pb2


def input_location(spec: input_pb2.InputSpec) -> str:
    """What names the guest before its metadata is read: a file, URI or libvirt domain."""
    plugin, options = INPUTS.lookup(spec)
    return plugin.location(options)


def source_host(spec: input_pb2.InputSpec) -> str:
    """The host a guest's disks are read from: the resource the per-source-host limit protects."""
    plugin, options = INPUTS.lookup(spec)
    return plugin.source_host(options)
