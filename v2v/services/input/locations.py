"""Where a guest comes from, read off its InputSpec: what names it before its metadata is read,
and the host its disks are read from (the resource the per-source-host limit protects)."""

from __future__ import annotations

from urllib.parse import urlsplit

from v2v.v1 import input_pb2

LOCAL_HOST = "localhost"


def input_location(spec: input_pb2.InputSpec) -> str:
    """What names the guest before its metadata is read: a file, URI or libvirt domain."""
    kind = spec.WhichOneof("kind")
    if kind == "disk":
        return spec.disk.paths[0] if spec.disk.paths else ""
    if kind == "vmx":
        return spec.vmx.location
    if kind in ("libvirt", "xen", "vcenter"):
        domain: str = getattr(spec, kind).domain
        return domain
    if kind in ("vmware_https", "vddk"):
        https = spec.vmware_https if kind == "vmware_https" else spec.vddk.https
        return urlsplit(https.url).path
    return getattr(spec, kind).path if kind else ""


def source_host(spec: input_pb2.InputSpec) -> str:
    """The host a guest's disks are read from: the resource the per-source-host limit protects."""
    kind = spec.WhichOneof("kind")
    if kind == "vmx" and spec.vmx.location.startswith("ssh://"):
        return urlsplit(spec.vmx.location).hostname or LOCAL_HOST
    if kind in ("vmware_https", "vddk"):
        https = spec.vmware_https if kind == "vmware_https" else spec.vddk.https
        return urlsplit(https.url).hostname or LOCAL_HOST
    if kind in ("libvirt", "xen", "vcenter"):
        return urlsplit(getattr(spec, kind).uri).hostname or LOCAL_HOST
    return LOCAL_HOST
