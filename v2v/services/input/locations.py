"""Where a guest comes from, read off its InputSpec by the input's own plugin: what names it before
its metadata is read, and the host its disks are read from (the resource the per-source-host limit
protects).

A spec with no input, or one of a plugin this process does not have (a coordinator whose remote
Input service has a plugin it lacks), has no location and is counted as local: the Input service
refuses the guest at Open with the reason, or opens it."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from v2v.errors import V2VError
from v2v.services.input.base import INPUTS, LOCAL_HOST, InputPlugin
from v2v.v1 import input_pb2


def _plugin(spec: input_pb2.InputSpec) -> tuple[InputPlugin[Any], Message] | None:
    try:
        return INPUTS.lookup(spec)
    except V2VError:
        return None


def input_location(spec: input_pb2.InputSpec) -> str:
    """What names the guest before its metadata is read: a file, URI or libvirt domain."""
    found = _plugin(spec)
    return found[0].location(found[1]) if found else ""


def source_host(spec: input_pb2.InputSpec) -> str:
    """The host a guest's disks are read from: the resource the per-source-host limit protects."""
    found = _plugin(spec)
    return found[0].source_host(found[1]) if found else LOCAL_HOST
