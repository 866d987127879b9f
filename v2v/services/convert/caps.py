"""GuestCaps: the virtual hardware the converted guest can drive, from its chosen kernel."""

from __future__ import annotations

from v2v.services.convert.family import Family
from v2v.services.convert.kernels import Kernel, version_key
from v2v.v1 import types_pb2 as pb


def legacy_machine(family: Family, insp: pb.Inspection) -> bool:
    """Systems older than q35 (virt-v2v's pivot when libosinfo does not know the guest)."""
    major = insp.major_version
    return (family is Family.RHEL and insp.distro != "fedora" and major <= 4) or \
        (family is Family.SUSE and major < 10) or (family is Family.DEBIAN and insp.distro == "debian" and major < 4)


def modern_virtio(kernel: Kernel, family: Family, insp: pb.Inspection) -> bool:
    """virtio 1.0 went into Linux 4.0; RHEL 7's 3.10 kernel has it backported."""
    return version_key(kernel.version)[:2] >= (4, 0) or \
        (family is Family.RHEL and insp.distro != "fedora" and insp.major_version >= 7)


def guest_caps(kernel: Kernel, family: Family, insp: pb.Inspection, block_driver: int = pb.BLOCK_BUS_UNSPECIFIED,
               rtc_utc: bool = True, secure_boot: bool = False) -> pb.GuestCaps:
    """`block_driver` is --block-driver (virtio-blk by default, virtio-scsi on request); a kernel
    without virtio gets IDE and e1000. Secure boot needs SMM, which only q35 has (virt-v2v forces it
    too)."""
    if not kernel.virtio:
        block_bus = pb.BLOCK_BUS_IDE
    elif block_driver == pb.BLOCK_BUS_VIRTIO_SCSI and kernel.has("virtio_scsi"):
        block_bus = pb.BLOCK_BUS_VIRTIO_SCSI
    else:
        block_bus = pb.BLOCK_BUS_VIRTIO_BLK
    x86 = insp.arch in ("x86_64", "i686", "i386")
    legacy = legacy_machine(family, insp) and not secure_boot
    return pb.GuestCaps(
        block_bus=block_bus,
        net_bus=pb.NET_BUS_VIRTIO_NET if kernel.virtio and kernel.has("virtio_net") else pb.NET_BUS_E1000,
        machine=(pb.MACHINE_I440FX if legacy else pb.MACHINE_Q35) if x86 else pb.MACHINE_VIRT,
        arch=insp.arch,
        virtio_1_0=kernel.virtio and modern_virtio(kernel, family, insp),
        virtio_rng=kernel.has("virtio_rng"),
        virtio_balloon=kernel.has("virtio_balloon"),
        pvpanic=kernel.has("pvpanic") or kernel.has("pvpanic_mmio"),
        virtio_socket=kernel.has("vmw_vsock_virtio_transport"),
        rtc_utc=rtc_utc,
        secure_boot=secure_boot,
    )
