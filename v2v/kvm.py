"""Whether this host can run guests under KVM: the conversion appliance's, libvirt's and the boot
check's one answer."""

from __future__ import annotations

import fcntl
import os

_KVM_GET_API_VERSION = 0xAE00  # ioctl of /dev/kvm: the only API version Linux ever had is 12
_KVM_API_VERSION = 12


def kvm_usable() -> bool:
    """/dev/kvm opens read-write and answers: libvirt's capabilities can offer kvm to a client that
    could not use it, e.g. one without access to the device."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == _KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)
