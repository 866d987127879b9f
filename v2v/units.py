"""Sizes for people."""


def human_size(n: float) -> str:
    """4.0 GiB, 210 MiB, 512 bytes: two significant digits at least, binary units."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    if unit == "bytes":
        return f"{n:.0f} bytes"
    return f"{n:.1f} {unit}" if n < 10 else f"{n:.0f} {unit}"
