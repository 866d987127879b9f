#!/usr/bin/env python3
"""Side by side on the phony Windows guests: each is converted by the installed virt-v2v 2.2 and by
v2v (`-i disk IMG -o local`, the same fake virtio-win tree and fake rhsrvany), then the source and
both outputs are read back in one appliance and the registry changes (SYSTEM, SOFTWARE) and the file
changes of each tool are listed: in both, virt-v2v only, v2v only. Both wall times and their ratio
are printed. docs/conversion.md ("Windows, side by side") explains every difference.

    .venv/bin/python bench/compare_windows.py [--guests win2k22,win11,win7-32,winxp-32] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import guestfs
import hivex

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.guests.windows.build import Built, cached  # noqa: E402

V2V = Path(sys.executable).parent / "v2v"
HIVES = {"SYSTEM": "/Windows/System32/config/SYSTEM", "SOFTWARE": "/Windows/System32/config/SOFTWARE"}


def run(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    return time.monotonic() - t0, p.returncode, p.stdout + p.stderr


def hive_values(path: Path, name: str) -> dict[str, str]:
    """'HIVE\\key\\value' -> 'type:data-hex', every value of the hive (keys as 'HIVE\\key\\')."""
    h = hivex.Hivex(str(path))
    out: dict[str, str] = {}

    def walk(node: int, key: str) -> None:
        out[f"{name}\\{key}\\"] = "key"
        for v in h.node_values(node):
            kind, data = h.value_value(v)
            out[f"{name}\\{key}\\{h.value_key(v) or '@'}"] = f"{kind}:{data.hex()}"
        for child in h.node_children(node):
            walk(child, f"{key}\\{h.node_name(child)}" if key else h.node_name(child))

    walk(h.root(), "")
    return out


def view(g: guestfs.GuestFS, dev: str, scratch: Path, tag: str) -> tuple[dict[str, str], dict[str, str]]:
    """(registry values, files: path -> sha256) of the guest's C: (partition 2 of every phony guest)."""
    g.mount_ro(f"{dev}2", "/")
    try:
        reg: dict[str, str] = {}
        for name, path in HIVES.items():
            local = scratch / f"{tag}-{name}"
            g.download(path, str(local))
            reg.update(hive_values(local, name))
        files = {}
        for p in g.find("/"):
            if g.is_file(f"/{p}"):
                files[p.lower()] = hashlib.sha256(g.read_file(f"/{p}")).hexdigest()
        hive_paths = {p.lstrip("/").lower() for p in HIVES.values()}
        return reg, {p: d for p, d in files.items() if p not in hive_paths}
    finally:
        g.umount_all()


def changes(before: dict[str, str], after: dict[str, str]) -> set[str]:
    out = set()
    for k in after.keys() | before.keys():
        if k not in before:
            out.add(f"+ {k}")
        elif k not in after:
            out.add(f"- {k}")
        elif before[k] != after[k]:
            out.add(f"~ {k}")
    return out


def compare(name: str, built: Built, work: Path) -> None:
    image = built.guests[name]
    env = dict(os.environ, VIRTIO_WIN=str(built.virtio_win), VIRT_TOOLS_DATA_DIR=str(built.virt_tools))
    theirs, ours = work / "virt-v2v" / name, work / "v2v" / name
    for d in (theirs, ours):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    t_theirs, rc_theirs, log_theirs = run(["virt-v2v", "-i", "disk", str(image), "-o", "local", "-os", str(theirs)],
                                          env)
    # The same tree and tools, from the same environment variables.
    t_ours, rc_ours, log_ours = run([str(V2V), "-i", "disk", str(image), "-o", "local", "-os", str(ours)], env)
    print(f"== {name}: virt-v2v {t_theirs:.1f} s (exit {rc_theirs}), v2v {t_ours:.1f} s (exit {rc_ours}), "
          f"ratio {t_ours / t_theirs:.2f}x")
    disks = [image] + [next(d.glob("*-sda"), None) for d in (theirs, ours)]
    if None in disks:
        for tool, log in (("virt-v2v", log_theirs), ("v2v", log_ours)):
            print(f"   {tool} output:\n" + "\n".join("     " + line for line in log.splitlines()[-8:]))
        return
    g = guestfs.GuestFS(python_return_dict=True)
    for disk in disks:
        g.add_drive_opts(str(disk), readonly=True, format="raw")
    g.launch()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            (src_reg, src_files), (a_reg, a_files), (b_reg, b_files) = (
                view(g, dev, Path(scratch), tag) for dev, tag in zip(g.list_devices(), ("src", "theirs", "ours"),
                                                                     strict=True))
    finally:
        g.close()
    for what, before, a, b in (("registry", src_reg, a_reg, b_reg), ("files", src_files, a_files, b_files)):
        ca, cb = changes(before, a), changes(before, b)
        # The same key changed to different data counts as "both" here; the data is in the lists below.
        print(f"   {what}: both {len(ca & cb)}, virt-v2v only {len(ca - cb)}, v2v only {len(cb - ca)}")
        for label, items in (("virt-v2v only", ca - cb), ("v2v only", cb - ca)):
            for item in sorted(items):
                print(f"     {label}: {item}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guests", default="win2k22,win11,win7-32,winxp-32")
    ap.add_argument("--keep", type=Path, help="keep the outputs in this directory")
    a = ap.parse_args()
    built = cached(Path("/var/tmp/guests/windows"))
    work = a.keep or Path(tempfile.mkdtemp(prefix="v2v-compare-windows."))
    try:
        for name in a.guests.split(","):
            compare(name, built, work)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
