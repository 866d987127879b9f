#!/usr/bin/env python3
"""Benchmark: copy while converting against convert-then-copy, on the real guest plus a data disk.

    .venv/bin/python bench/copy_while_converting.py [--data-size 8G] [--link-rate MIB/S] [--guest PATH] [--keep]

One conversion each way, one after the other, same command line but for --copy-while-converting:
`v2v -i disk GUEST DATA -if raw -o local -os DIR -of qcow2 --machine-readable` (embedded services,
TCG appliance; -if raw because the data disk holds no partition table). DATA is a sparse raw disk,
half of it random data (copy_speed.py's source: 64 MiB pieces alternating with 64 MiB holes), which
the conversion never touches: the case the mode is for, a guest whose copy is long next to its
conversion. Prints each run's wall time and top-level steps,
and the ratio copy-while-converting / convert-then-copy (below 1.0 is a win).

--link-rate N: both disks are read as over a network link of N MiB/s each (nbdkit's rate filter in
front of the file, given to v2v as an nbd+unix:// URI), as from an ESXi host, where migrations see
~100 MiB/s per guest; the conversion reads through the same link.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copy_speed  # noqa: E402  (bench/ is scripts, not a package)
import e2e  # noqa: E402

from v2v.nbdserver import Nbdkit, nbd_uri  # noqa: E402

MODES = {"convert-then-copy": [], "copy-while-converting": ["--copy-while-converting"]}


def over_link(disks: list[Path], mib_per_s: int, base: Path, stack: ExitStack) -> list[str]:
    """Each disk behind its own nbdkit rate filter (which counts bits): its NBD URI."""
    base.mkdir(parents=True)
    uris = []
    for n, disk in enumerate(disks):
        sock = base / f"link{n}.sock"
        # rate= counts bits, and nbdkit's M is 2^20
        stack.enter_context(Nbdkit(sock, base / f"link{n}.log", f"link to {disk}", "file",
                                   [f"file={disk}", f"rate={mib_per_s * 8}M"], filters=["rate"], readonly=True))
        uris.append(nbd_uri(sock))
    return uris


def run_mode(extra: list[str], disks: list[Path | str], base: Path, env: dict[str, str]) -> e2e.Result:
    out_dir = base / "out"
    out_dir.mkdir(parents=True)
    env = dict(env, V2V_WORKDIR_ROOT=str(base / "work"))
    cmd = [str(e2e.OURS), "-i", "disk", *map(str, disks), "-if", "raw", "-o", "local", "-os", str(out_dir),
           "-of", "qcow2", "--machine-readable", *extra]
    wall, rc, out, err = e2e.run(cmd, base / "v2v", env)
    steps, status = e2e.parse_ours(out.splitlines())
    ok = rc == 0 and (status or {}).get("state") == "GUEST_STATE_SUCCEEDED"
    shutil.rmtree(out_dir)  # gigabytes; the logs stay
    return e2e.Result("v2v", wall, ok, steps, "" if ok else f"rc={rc}; stderr:\n{e2e.tail(err)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guest", type=Path, help=f"the system disk, raw (default {e2e.DEFAULT_GUEST})")
    p.add_argument("--data-size", type=copy_speed.disk_size, default=copy_speed.disk_size("8G"),
                   help="the data disk's virtual size, half of it data (a multiple of 512M; default 8G)")
    p.add_argument("--link-rate", type=int, default=0, metavar="MIB/S",
                   help="read both disks as over a link of this many MiB/s each (default: local files)")
    p.add_argument("--keep", action="store_true", help="keep the data disk and the logs (the directory is printed)")
    a = p.parse_args(argv)
    guest = e2e.prepare_guest(a.guest)
    env = dict(os.environ, LIBGUESTFS_BACKEND=os.environ.get("LIBGUESTFS_BACKEND", "direct"),
               LIBGUESTFS_BACKEND_SETTINGS=os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"))
    with copy_speed.workspace(Path("/var/tmp"), a.keep) as top, ExitStack() as links:
        data = top / "data.raw"
        data_bytes = copy_speed.make_source(data, a.data_size)
        link = f"; each disk over a {a.link_rate} MiB/s link" if a.link_rate else ""
        print(f"data disk: {data_bytes / 2**30:.1f} GiB of data in {a.data_size / 2**30:.1f} GiB; guest {guest}{link}",
              flush=True)
        disks: list[Path | str] = [guest, data]
        if a.link_rate:
            disks = list(over_link([guest, data], a.link_rate, top / "link", links))
        results = {}
        for mode, extra in MODES.items():
            results[mode] = r = run_mode(extra, disks, top / mode, env)
            print(f"{mode}: {r.wall:.1f} s" + ("" if r.ok else f" FAILED\n{r.error}"), flush=True)
        if not all(r.ok for r in results.values()):
            return 1
        for mode, r in results.items():
            e2e.print_steps(mode, [r])
        before, after = results["convert-then-copy"].wall, results["copy-while-converting"].wall
        print(f"\ncopy-while-converting / convert-then-copy: {after:.1f} s / {before:.1f} s = {after / before:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
