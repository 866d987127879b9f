#!/usr/bin/env python3
"""Benchmark: what the boot check (`v2v verify-boot`, docs/verify.md) costs against a bare boot of
the same converted disk by ../shared/guests/boot-test.sh, in one run.

    .venv/bin/python bench/verify_boot.py [--guest PATH] [--runs N] [--kvm]

Converts the guest once (`v2v -i disk ... -o local -of qcow2`), then, alternately N times: the
baseline (boot-test.sh: qemu on snapshot=on until the guest's marker line) and the check (overlay,
probe, boot until the probe reports, under TCG; with --kvm also under KVM, for machines where KVM
guests boot). Prints the medians, the check's sub-steps, and the ratio check / bare boot.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (bench/ is scripts, not a package)

BOOT_TEST = e2e.SHARED_GUESTS / "boot-test.sh"
TIMEOUT = 900  # s: a TCG boot on a loaded machine takes minutes


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT + 120, check=False)
    return time.monotonic() - t0, p


def bare_boot(disk: Path, log: Path, env: dict[str, str]) -> float:
    wall, p = timed([str(BOOT_TEST), "-b", "virtio", "-n", "virtio", "-t", str(TIMEOUT), "-l", str(log), str(disk)],
                    env)
    if p.returncode != 0:
        sys.exit(f"bench: boot-test.sh failed (rc {p.returncode}):\n{e2e.tail(p.stdout + p.stderr)}")
    return wall


def check(xml: Path, accel: str, env: dict[str, str]) -> tuple[float, dict[str, float], float]:
    """(wall s, sub-step durations, seconds to userspace) of one `v2v verify-boot --xml`."""
    wall, p = timed([str(e2e.OURS), "verify-boot", "--xml", str(xml), "--accel", accel, "--timeout", str(TIMEOUT),
                     "--machine-readable"], env)
    docs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    result = next((d["result"] for d in docs if "result" in d), {})
    if p.returncode != 0 or result.get("outcome") != "VERIFY_OUTCOME_BOOTED":
        sys.exit(f"bench: verify-boot --accel {accel} did not pass (rc {p.returncode}):\n"
                 f"{e2e.tail(p.stdout + p.stderr)}")
    subs = {d["step"]["step"]: e2e.seconds(d["step"]["duration"]) for d in docs
            if "step" in d and d["step"].get("parent") == "verify" and "duration" in d["step"]}
    return wall, subs, float(result.get("seconds_to_userspace", 0.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guest", type=Path, help=f"disk image to convert (default {e2e.DEFAULT_GUEST})")
    p.add_argument("--runs", type=int, default=1, help="boots of each kind (default 1)")
    p.add_argument("--kvm", action="store_true", help="also check under KVM (only where KVM guests boot)")
    a = p.parse_args(argv)
    guest = e2e.prepare_guest(a.guest)
    env = dict(os.environ, LIBGUESTFS_BACKEND=os.environ.get("LIBGUESTFS_BACKEND", "direct"),
               LIBGUESTFS_BACKEND_SETTINGS=os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"))
    with tempfile.TemporaryDirectory(prefix="bench-verify.", dir="/var/tmp") as tmp:
        base = Path(tmp)
        out = base / "out"
        out.mkdir()
        env["V2V_WORKDIR_ROOT"] = str(base / "work")
        wall, conv = timed([str(e2e.OURS), "-i", "disk", str(guest), "-o", "local", "-os", str(out), "-of", "qcow2",
                            "-on", "g", "-q"], env)
        if conv.returncode != 0:
            sys.exit(f"bench: the conversion failed:\n{e2e.tail(conv.stderr)}")
        print(f"converted {guest.name} in {wall:.1f} s")
        accels = ["tcg", "kvm"] if a.kvm else ["tcg"]
        bare: list[float] = []
        checks: dict[str, list[tuple[float, dict[str, float], float]]] = {acc: [] for acc in accels}
        for i in range(a.runs):
            bare.append(bare_boot(out / "g-sda", base / f"serial-{i}.log", env))
            for acc in accels:
                checks[acc].append(check(out / "g.xml", acc, env))
    base_s = statistics.median(bare)
    print(f"\n  {'':34} {'seconds':>8}   ratio to the bare boot")
    print(f"  {'bare boot (boot-test.sh, TCG)':34} {base_s:8.1f}")
    for acc, runs in checks.items():
        total = statistics.median(r[0] for r in runs)
        print(f"  {'verify-boot --accel ' + acc:34} {total:8.1f}   {total / base_s:5.2f}x")
        for name in runs[0][1]:
            print(f"    {name:32} {statistics.median(r[1].get(name, 0.0) for r in runs):8.1f}")
        print(f"    {'to userspace (in boot)':32} {statistics.median(r[2] for r in runs):8.1f}")
    if not a.kvm:
        print("  KVM: not measured (--kvm, where KVM guests boot; they hang on this kind of machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
