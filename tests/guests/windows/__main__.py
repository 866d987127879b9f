"""python -m tests.guests.windows OUTDIR [NAME...]: builds the phony Windows guests (all, or the
named ones) and the fake virtio-win into OUTDIR, and prints the paths."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.guests.windows.build import GUESTS, build_all


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(f"usage: python -m tests.guests.windows OUTDIR [NAME...]\nnames: {' '.join(GUESTS)}", file=sys.stderr)
        return 2
    built = build_all(Path(argv[0]), argv[1:] or None)
    for path in (*built.guests.values(), built.virtio_win, built.virtio_win_iso, built.virt_tools):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
