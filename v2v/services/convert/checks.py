"""Checks before the conversion changes anything: filesystems consistent (fsck, read-only) and
enough free space for what the conversion writes (virt-v2v's documented minimums)."""

from __future__ import annotations

import shlex

import guestfs

from v2v.errors import V2VError
from v2v.events import StepReporter
from v2v.units import human_size
from v2v.v1 import types_pb2 as pb

MiB = 1 << 20
# virt-v2v(1), "Minimum free space check in the guest": / may get packages, /boot new initramfs images.
FREE_BYTES = {"/": 100 * MiB, "/boot": 50 * MiB}
FREE_BYTES_OTHER = 10 * MiB
FREE_INODES = 100
# udev re-reads a disk's partition table when a writer closes it, removing and re-adding the
# partition nodes; on a loaded host e2fsck has met that window even after udevadm settle (ENOENT,
# "Possibly non-existent device?", exit 8) and the check silently did nothing. So wait for the
# node, and try again while e2fsck could not check at all (exit 8 or more: an operational error,
# never a verdict on the filesystem).
_E2FSCK = ("d={dev}; b=$(basename \"$(readlink -f $d)\"); "
           "for try in 1 2 3 4 5 6 7 8 9 10; do udevadm settle; i=0; "
           "while [ ! -b $d ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; node=$d; "
           # A node still missing while the kernel has the partition (sysfs): check it through one
           # made here from its major:minor, as the mount step opens it moments later.
           "if [ ! -b $d ] && [ -r /sys/class/block/$b/dev ]; then node=/tmp/v2v-fsck-$b; rm -f $node; "
           "mknod $node b $(tr : ' ' < /sys/class/block/$b/dev); fi; "
           "out=$(e2fsck -n -f $node 2>&1); rc=$?; "
           "[ $rc -lt 8 ] && break; sleep 1; done; "
           "[ -b $d ] && seen=yes || seen=no; grep -qw $b /proc/partitions && part=yes || part=no; "
           "printf '%s\\n' \"$out (node $d: $seen; in /proc/partitions: $part)\"; echo rc=$rc")


def fsck(g: guestfs.GuestFS, insp: pb.Inspection, report: StepReporter) -> None:
    """Checks the guest's ext2/3/4 and xfs filesystems (e2fsck -n, xfs_repair -n: nothing is changed)
    before anything is mounted. Converting a corrupt filesystem would make it
    worse: errors fail the conversion, naming the filesystem."""
    for mp, dev in sorted(insp.mountpoints.items()):
        try:
            fstype = g.vfs_type(dev)
        except RuntimeError as exc:
            report.warn(f"{dev} ({mp}): its filesystem type cannot be read, so it is not checked: {exc}", step="fsck")
            continue
        if fstype in ("ext2", "ext3", "ext4"):
            # e2fsck -n: 0 clean, bit 4 errors left uncorrected (it may not correct), 8+ could not
            # check. Partition nodes can lag behind inspection on a loaded host: settle udev first.
            out = g.debug("sh", [_E2FSCK.format(dev=shlex.quote(dev))])
            rc = int(out.rsplit("rc=", 1)[-1].strip() or 8)
            if rc & 4:
                raise V2VError(f"filesystem {dev} ({mp}, {fstype}) has errors: repair it in the source guest "
                               "(e2fsck -f) and convert again", pb.ERROR_CODE_CONVERSION_FAILED, detail=out[-2000:])
            if rc & ~1:
                why = out.rsplit("rc=", 1)[0].strip().splitlines()[-1:] or [""]
                report.warn(f"e2fsck -n {dev} ({mp}) could not check it (exit {rc}): {why[0]}", step="fsck")
                continue
        elif fstype == "ntfs":
            probe_ntfs(g, dev, mp, report)
        elif fstype == "xfs":
            if g.xfs_repair(dev, nomodify=True, forcelogzero=False) != 0:
                raise V2VError(f"filesystem {dev} ({mp}, xfs) has errors: repair it in the source guest "
                               "(xfs_repair) and convert again", pb.ERROR_CODE_CONVERSION_FAILED)
        else:
            continue
        report.note(f"{dev} ({mp}, {fstype}): clean", step="fsck")


# ntfs-3g.probe's exit codes (ntfs-3g's include/ntfs-3g/volume.h, NTFS_VOLUME_*).
_NTFS_HIBERNATED = 14
_NTFS_UNCLEAN = 15


def probe_ntfs(g: guestfs.GuestFS, dev: str, mp: str, report: StepReporter) -> None:
    """A hibernated NTFS (hibernation or Fast Startup, which hibernates the kernel) must not be
    written: Windows would resume onto a filesystem changed under it. ntfs-3g refuses it too."""
    rc = g.ntfs_3g_probe(True, dev)
    if rc == _NTFS_HIBERNATED:
        raise V2VError(f"the Windows filesystem {dev} ({mp}) is hibernated (hibernation or Fast Startup): boot the "
                       "source guest, turn Fast Startup off (powercfg /h off, or Power Options > 'Turn on fast "
                       "startup'), shut it down cleanly and convert again", pb.ERROR_CODE_UNSUPPORTED)
    if rc == _NTFS_UNCLEAN:
        report.warn(f"{dev} ({mp}) was not shut down cleanly: ntfs-3g will repair its log; shut the source guest "
                    "down cleanly before the final conversion", step="fsck")
    elif rc:
        raise V2VError(f"the Windows filesystem {dev} ({mp}) cannot be written (ntfs-3g.probe exit {rc}): run chkdsk "
                       "in the source guest and convert again", pb.ERROR_CODE_CONVERSION_FAILED)


def check_free_space(g: guestfs.GuestFS, mounted: list[str], report: StepReporter) -> None:
    for mp in mounted:
        try:
            st = g.statvfs(mp)
        except RuntimeError:
            continue
        if st["blocks"] == 0 or st["flag"] & 1:  # pseudo or read-only filesystem: nothing is written there
            continue
        free = st["bavail"] * st["bsize"]
        need = FREE_BYTES.get(mp, FREE_BYTES_OTHER)
        if free < need:
            raise V2VError(f"not enough free space on {mp} for the conversion: {human_size(free)} free, "
                           f"{human_size(need)} needed; free some space in the guest and convert again",
                           pb.ERROR_CODE_CONVERSION_FAILED)
        if 0 < st["files"] and st["favail"] < FREE_INODES:
            raise V2VError(f"not enough free inodes on {mp} for the conversion: {st['favail']} free, "
                           f"{FREE_INODES} needed", pb.ERROR_CODE_CONVERSION_FAILED)
        report.note(f"{mp}: {human_size(free)} free", step="free-space")
