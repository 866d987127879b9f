"""Sizes for people, both ways."""


def human_size(n: float) -> str:
    """4.0 GiB, 210 MiB, 512 bytes: two significant digits at least, binary units."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    if unit == "bytes":
        return f"{n:.0f} bytes"
    return f"{n:.1f} {unit}" if n < 10 else f"{n:.0f} {unit}"


def parse_size(text: str) -> int:
    """Bytes from "4G", "512M", "1024" (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text[-1:] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)
