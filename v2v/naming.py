"""Guest names derived from file names, the way virt-v2v derives them."""

from pathlib import Path


def name_from_path(path: str) -> str:
    """The file name without its extension: /images/web01.vmdk -> web01."""
    return Path(path).stem or Path(path).name
