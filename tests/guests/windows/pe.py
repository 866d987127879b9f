"""A minimal PE image, written from the format, to stand in for C:\\Windows\\System32\\cmd.exe:
libguestfs takes a Windows guest's arch from `file` on cmd.exe ("PE32 executable" is i386, "PE32+
executable" is x86_64). One .text section holding a `ret`; it is never run."""

from __future__ import annotations

import struct

_FILE_ALIGN, _SECTION_ALIGN = 0x200, 0x1000
_PE_OFFSET = 0x80
# arch -> (COFF machine, optional-header magic, COFF characteristics, image base)
_ARCHES = {
    "i386": (0x014C, 0x10B, 0x0102, 0x00400000),  # EXECUTABLE_IMAGE | 32BIT_MACHINE
    "x86_64": (0x8664, 0x20B, 0x0022, 0x140000000),  # EXECUTABLE_IMAGE | LARGE_ADDRESS_AWARE
}


def pe_executable(arch: str) -> bytes:
    """A console PE32 (arch 'i386') or PE32+ (arch 'x86_64') executable."""
    machine, magic, characteristics, image_base = _ARCHES[arch]
    pe32plus = magic == 0x20B
    dos = b"MZ".ljust(0x3C, b"\0") + struct.pack("<I", _PE_OFFSET)
    dos = (dos + b"This program cannot be run in DOS mode.\r\n$").ljust(_PE_OFFSET, b"\0")

    # Standard fields: linker 14.0, code size, no data, entry point and code base at the section.
    standard = struct.pack("<HBBIIIII", magic, 14, 0, _FILE_ALIGN, 0, 0, _SECTION_ALIGN, _SECTION_ALIGN)
    if not pe32plus:
        standard += struct.pack("<I", 0)  # BaseOfData exists only in PE32
    image_size, headers_size = 2 * _SECTION_ALIGN, _FILE_ALIGN
    ptr = "Q" if pe32plus else "I"
    windows = struct.pack(f"<{ptr}IIHHHHHHIIIIHH{ptr}{ptr}{ptr}{ptr}II", image_base, _SECTION_ALIGN, _FILE_ALIGN,
                          6, 0, 0, 0, 6, 0, 0, image_size, headers_size, 0,
                          3,  # IMAGE_SUBSYSTEM_WINDOWS_CUI: console, as cmd.exe is
                          0x8140,  # TERMINAL_SERVER_AWARE | NX_COMPAT | DYNAMIC_BASE
                          0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    optional = standard + windows + bytes(16 * 8)  # 16 empty data directories
    coff = struct.pack("<HHIIIHH", machine, 1, 0, 0, 0, len(optional), characteristics)
    section = struct.pack("<8sIIIIIIHHI", b".text", 1, _SECTION_ALIGN, _FILE_ALIGN, _FILE_ALIGN, 0, 0, 0, 0,
                          0x60000020)  # CODE | EXECUTE | READ
    headers = (dos + b"PE\0\0" + coff + optional + section).ljust(headers_size, b"\0")
    return headers + b"\xc3".ljust(_FILE_ALIGN, b"\0")
