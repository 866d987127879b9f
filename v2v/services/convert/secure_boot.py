"""Whether the converted guest boots with UEFI secure boot: when the source says it did, or when
its boot chain (shim, then grub, then the chosen kernel) is signed, as a distribution's is.

virt-v2v 2.x never reads the source's setting: it turns secure boot on only when the host's sole
OVMF build is a secure-boot one (its UEFI_FLAG_SECURE_BOOT_REQUIRED), and then adds SMM."""

from __future__ import annotations

import struct

import guestfs

from v2v.events import StepReporter
from v2v.services.convert.kernels import Kernel
from v2v.v1 import types_pb2 as pb

STEP = "secure-boot"
ESP_EFI = "/boot/efi/EFI"
# Distributions' names for the Microsoft-signed first stage and the grub it starts (SUSE: shim.efi, grub.efi).
SHIMS = ("shimx64.efi", "shim.efi")
GRUBS = ("grubx64.efi", "grub.efi")
# PE/COFF: e_lfanew at 0x3c; the data directories follow the optional header's fixed part, whose
# length depends on its magic (PE32, PE32+); directory 4 is the certificate table (file offset, size).
_PE_HEADER_BYTES = 4096
_OPTIONAL_HEADER = 24
_DIRECTORIES = {0x10B: 96, 0x20B: 112}
_CERTIFICATE_TABLE = 4
_WIN_CERT_TYPE_PKCS_SIGNED_DATA = 2


def certificate_table(header: bytes) -> tuple[int, int] | None:
    """(file offset, size) of a PE image's Authenticode certificate table, from its first bytes;
    None when the file is not a PE image or carries no signature."""
    if len(header) < 0x40 or header[:2] != b"MZ":
        return None
    pe = struct.unpack_from("<I", header, 0x3C)[0]
    optional = pe + _OPTIONAL_HEADER
    if len(header) < optional + 2 or header[pe:pe + 4] != b"PE\0\0":
        return None
    directories = _DIRECTORIES.get(struct.unpack_from("<H", header, optional)[0])
    if directories is None or len(header) < optional + directories + 8 * (_CERTIFICATE_TABLE + 1):
        return None
    if struct.unpack_from("<I", header, optional + directories - 4)[0] <= _CERTIFICATE_TABLE:
        return None
    offset, size = struct.unpack_from("<II", header, optional + directories + 8 * _CERTIFICATE_TABLE)
    return (offset, size) if offset and size >= 8 else None


def pe_signed(g: guestfs.GuestFS, path: str) -> bool:
    """The file is a PE image (EFI binary, EFI-stub kernel) with a PKCS#7 signature. Whose key
    signed it is the firmware's business: a distribution's chain is signed by keys shim knows."""
    table = certificate_table(g.pread(path, _PE_HEADER_BYTES, 0))
    if table is None:
        return False
    head: bytes = g.pread(path, 8, table[0])
    length, _revision, cert_type = struct.unpack("<IHH", head.ljust(8, b"\0"))
    return bool(cert_type == _WIN_CERT_TYPE_PKCS_SIGNED_DATA and length > 8)


def boot_chain(g: guestfs.GuestFS, kernel: Kernel) -> list[str]:
    """The guest's shim, the grub beside it and the kernel, when the ESP has a shim; else []."""
    if not g.is_dir(ESP_EFI):
        return []
    for vendor in sorted(g.ls(ESP_EFI)):
        directory = f"{ESP_EFI}/{vendor}"
        if vendor.upper() == "BOOT" or not g.is_dir(directory):
            continue
        files = {name.lower(): f"{directory}/{name}" for name in g.ls(directory)}
        shim = next((files[s] for s in SHIMS if s in files), None)
        grub = next((files[s] for s in GRUBS if s in files), None)
        if shim and grub:
            return [shim, grub, kernel.vmlinuz]
    return []


def wants_secure_boot(g: guestfs.GuestFS, source: pb.Source, insp: pb.Inspection, kernel: Kernel,
                      report: StepReporter) -> bool:
    if (source.firmware or insp.firmware) != pb.FIRMWARE_UEFI:
        if source.secure_boot:
            report.warn("the source says secure boot but the guest boots with BIOS: secure boot off", step=STEP)
        else:
            report.note("secure boot off: the guest boots with BIOS", step=STEP)
        return False
    chain = boot_chain(g, kernel)
    unsigned = [path for path in chain if not pe_signed(g, path)]
    if source.secure_boot:
        if not chain:
            report.warn("secure boot on, as on the source, but the ESP has no shim: the firmware may find "
                        "nothing signed to boot", step=STEP)
        elif unsigned:
            report.warn(f"secure boot on, as on the source, but {', '.join(unsigned)} not signed: the firmware "
                        "may refuse to boot it", step=STEP)
        else:
            report.note("secure boot on, as on the source", step=STEP)
        return True
    if not chain:
        report.note("secure boot off: no shim on the ESP", step=STEP)
        return False
    if unsigned:
        report.note(f"secure boot off: {', '.join(unsigned)} not signed", step=STEP)
        return False
    report.note(f"secure boot on: {' -> '.join(chain)} signed", step=STEP)
    return True
