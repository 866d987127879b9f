#!/usr/bin/env python3
"""Side by side: convert the real test guest with our `v2v` and with the installed virt-v2v, then
diff what each changed in the guest and what each wrote for the target.

    .venv/bin/python bench/compare_virt_v2v.py [--guest PATH] [--keep]
    .venv/bin/python bench/compare_virt_v2v.py --ours DIR --theirs DIR   # outputs of earlier runs

Both convert `-i disk GUEST -o local -of qcow2` (bench/e2e.py runs them, so the convert-step times
come out too). Then each output disk and the source are opened read-only with libguestfs and
compared: every file under /etc and /boot (added, removed, changed against the source, and by which
tool), the text of fstab, /etc/default/grub and the kernel lines of grub.cfg, the initramfs module
list of the default kernel (host `lsinitramfs`), the installed packages, and the devices of the two
domain XMLs. docs/conversion.md explains each difference.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import guestfs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert as convert_bench  # noqa: E402  (bench/ is scripts, not a package)
import e2e  # noqa: E402

TEXT_FILES = ("/etc/fstab", "/etc/default/grub", "/etc/initramfs-tools/modules")
# Files every boot or every appliance run touches: a difference there says nothing about a conversion.
NOISE = re.compile(r"^/etc/(ld\.so\.cache|mtab|machine-id|adjtime)$|^/boot/grub/grubenv$")


@dataclass
class GuestView:
    """What one disk's guest holds: file digests under /etc and /boot, some texts, packages, the
    default kernel's initramfs modules."""

    files: dict[str, str]
    texts: dict[str, str]
    grub_kernel_lines: list[str]
    packages: dict[str, str]
    initramfs_modules: set[str]


def digests(tar_bytes: bytes, prefix: str) -> tuple[dict[str, str], dict[str, bytes]]:
    files: dict[str, str] = {}
    contents: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for m in tar:
            path = prefix + "/" + m.name.removeprefix("./").rstrip("/")
            if m.isfile():
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                files[path] = hashlib.sha256(data).hexdigest()
                contents[path] = data
            elif m.issym():
                files[path] = "-> " + m.linkname
    return files, contents


def view(disk: Path, scratch: Path) -> GuestView:
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(disk), readonly=1)
    g.launch()
    try:
        root = g.inspect_os()[0]
        for mp, dev in sorted(g.inspect_get_mountpoints(root).items(), key=lambda kv: len(kv[0])):
            g.mount_ro(dev, mp)
        files: dict[str, str] = {}
        contents: dict[str, bytes] = {}
        for top in ("/etc", "/boot"):
            tar = scratch / "tree.tar"
            g.tar_out(top, str(tar))
            f, c = digests(tar.read_bytes(), top)
            files |= f
            contents |= c
        packages = {a["app2_name"]: a["app2_version"] for a in g.inspect_list_applications2(root)}
    finally:
        g.close()
    texts = {p: contents[p].decode(errors="replace") for p in TEXT_FILES if p in contents}
    grub = contents.get("/boot/grub/grub.cfg", b"").decode(errors="replace")
    kernel_lines = [ln.strip() for ln in grub.splitlines() if re.match(r"\s*(linux|set default|search)\b", ln)]
    # The newest kernel's image; backups (.pre-v2v, .bak) are not what the guest boots.
    initrds = sorted((p for p in contents if p.startswith("/boot/initrd.img-")
                      and not p.endswith((".pre-v2v", ".bak", ".old-dkms"))), key=version_key)
    modules: set[str] = set()
    if initrds:
        img = scratch / "initrd.img"
        img.write_bytes(contents[initrds[-1]])
        listing = subprocess.run(["lsinitramfs", str(img)], capture_output=True, text=True, check=True).stdout
        modules = {re.sub(r"\.ko(\.\w+)?$", "", ln.rsplit("/", 1)[-1]) for ln in listing.splitlines()
                   if re.search(r"\.ko(\.\w+)?$", ln)}
    return GuestView(files, texts, kernel_lines, packages, modules)


def version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def changes(source: GuestView, out: GuestView) -> dict[str, str]:
    """path -> added / removed / changed, against the source; boot noise left out."""
    result = {}
    for path in sorted(source.files.keys() | out.files.keys()):
        if NOISE.match(path):
            continue
        before, after = source.files.get(path), out.files.get(path)
        if before != after:
            result[path] = "added" if before is None else "removed" if after is None else "changed"
    return result


def devices(xml_path: Path) -> list[str]:
    """One line per device of a domain XML: its kind and the attributes that say what it is."""
    dev = ET.parse(xml_path).getroot().find("devices")
    lines = []
    for d in dev if dev is not None else []:
        parts = [d.tag] + [f"{k}={v}" for k, v in sorted(d.attrib.items())]
        for child in ("target", "model", "driver", "backend", "address"):
            c = d.find(child)
            if c is not None and child != "address":
                parts += [f"{child}.{k}={v}" for k, v in sorted(c.attrib.items()) if k not in ("dev",)]
        lines.append(" ".join(parts))
    return sorted(lines)


def print_diff(title: str, a: list[str], b: list[str]) -> None:
    diff = list(difflib.unified_diff(a, b, "virt-v2v", "v2v", lineterm="", n=1))
    print(f"\n-- {title}: " + ("same" if not diff else "differs"))
    for line in diff[2:]:
        print("   " + line)


def report(source: GuestView, ours: GuestView, theirs: GuestView, our_xml: Path, their_xml: Path) -> None:
    ch_ours, ch_theirs = changes(source, ours), changes(source, theirs)
    print("\n== files under /etc and /boot changed against the source ==")
    print(f"  {'path':60} {'virt-v2v':>9} {'v2v':>9}")
    for path in sorted(ch_ours.keys() | ch_theirs.keys()):
        a, b = ch_theirs.get(path, "-"), ch_ours.get(path, "-")
        same = a == b and ours.files.get(path) == theirs.files.get(path)
        print(f"  {path:60} {a:>9} {b:>9}" + ("" if same else "   <- differs"))
    for path in TEXT_FILES:
        print_diff(path, theirs.texts.get(path, "").splitlines(), ours.texts.get(path, "").splitlines())
    print_diff("grub.cfg kernel lines", theirs.grub_kernel_lines, ours.grub_kernel_lines)
    print(f"\n-- initramfs modules: virt-v2v {len(theirs.initramfs_modules)}, v2v {len(ours.initramfs_modules)}, "
          f"source {len(source.initramfs_modules)}")
    print(f"   only virt-v2v's: {' '.join(sorted(theirs.initramfs_modules - ours.initramfs_modules)) or '-'}")
    print(f"   only ours:       {' '.join(sorted(ours.initramfs_modules - theirs.initramfs_modules)) or '-'}")
    for who, out in (("virt-v2v", theirs), ("v2v", ours)):
        removed = sorted(source.packages.keys() - out.packages.keys())
        added = sorted(out.packages.keys() - source.packages.keys())
        print(f"-- packages, {who}: removed {' '.join(removed) or '-'}; installed {' '.join(added) or '-'}")
    print_diff("domain XML devices", devices(their_xml), devices(our_xml))


def only(paths: list[Path], what: str) -> Path:
    if len(paths) != 1:
        sys.exit(f"compare: expected one {what}, found {[str(p) for p in paths]}")
    return paths[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guest", type=Path, help=f"disk image to convert (default {e2e.DEFAULT_GUEST})")
    p.add_argument("--ours", type=Path, help="an existing output directory of our v2v -o local (skips converting)")
    p.add_argument("--theirs", type=Path, help="an existing output directory of virt-v2v -o local")
    p.add_argument("--keep", action="store_true", help="keep the outputs (the directory is printed)")
    a = p.parse_args(argv)
    if bool(a.ours) != bool(a.theirs):
        p.error("--ours and --theirs go together")
    guest = e2e.prepare_guest(a.guest)
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    top = Path(tempfile.mkdtemp(prefix="v2v-compare.", dir="/var/tmp"))
    try:
        if a.ours:
            our_dir, their_dir = a.ours, a.theirs
        else:
            results = []
            for run in (e2e.run_ours, e2e.run_virt_v2v):
                print(f"converting with {run.__name__.removeprefix('run_')} ...", flush=True)
                results.append(run(guest, top, dict(os.environ)))
            if not e2e.report(results[:1], results[1:]):
                return 1
            convert_bench.print_ratios(results[:1], results[1:])
            our_dir, their_dir = top / "v2v-out", top / "virt-v2v-out"
        views = []
        for disk in (guest, only(sorted(our_dir.glob("*-sda")), "disk in " + str(our_dir)),
                     only(sorted(their_dir.glob("*-sda")), "disk in " + str(their_dir))):
            print(f"reading {disk} ...", flush=True)
            scratch = top / f"scratch{len(views)}"
            scratch.mkdir()
            views.append(view(disk, scratch))
        report(views[0], views[1], views[2], only(sorted(our_dir.glob("*.xml")), "domain XML"),
               only(sorted(their_dir.glob("*.xml")), "domain XML"))
    finally:
        if a.keep:
            print(f"\nkept: {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
