#!/usr/bin/env bash
# make-variant-guest.sh - build ONE real, bootable Debian 12 guest that combines the layouts a
# conversion must handle beyond the plain BIOS/MBR guest of ../shared/guests/make-linux-guest.sh,
# so that CI pays for one build:
#
#   UEFI     GPT, sda1 = EFI System Partition (vfat, /boot/efi), grub-efi-amd64 installed in
#            \EFI\debian only (--no-nvram, no \EFI\BOOT fallback: on VMware the boot entry lives in
#            the VM's .nvram, which a conversion does not carry over)
#   LVM      sda2 = /boot (ext4), sda3 = LVM PV of VG "vg0": vg0/root (xfs, /) and vg0/swap;
#            /etc/lvm/lvm.conf has a filter accepting only /dev/sd* (copied into the initramfs)
#   2 disks  sdb1 = /home (ext4), holding /home/user/hello.txt
#   network  ifupdown static 192.168.122.50/24 on ens160 (ESXi's name for a vmxnet3 NIC in slot 160)
#   VMware   fstab names /dev/sdX where it can, initramfs WITHOUT virtio drivers, open-vm-tools
#
# Output (OUTDIR, default /var/tmp/guests/variant):
#   NAME-sda.raw, NAME-sdb.raw     the two disks (4 GiB + 1 GiB, sparse)
#   vmx/NAME.vmx                    ESXi-style .vmx (firmware="efi", pvscsi, vmxnet3 with MAC $MAC)
#   vmx/NAME-sdX.vmdk + -flat.vmdk  vmfs descriptors and their flat extents (hard links to the raws)
#   SHA256SUMS (of the raws, made with them), timings.txt, build.log
#
# The marker (guest-boot-marker.service, printed on ttyS0, then poweroff) extends the shared one:
#   GUEST-BOOTED-OK host=.. kernel=.. fw=uefi|bios root=.. root-pvs=.. boot=.. esp=.. home=.. disks=..
#   nics=.. addrs=ens160:192.168.122.50/24 modules=.. open-vm-tools=present|absent failed-units=..
#
# Requirements: root, debootstrap, sfdisk, guestfish (libguestfs with xfs support: libguestfs-xfs),
# tar, sha256sum, a Debian mirror the first time (debs are cached in CACHEDIR).
# Idempotent: each step is skipped when its output exists and was made by the same recipe (the
# step's code and settings). -f rebuilds all but the downloaded debs.
{ # whole script in one compound command: editing this file while it runs cannot corrupt the run
set -euo pipefail

OUTDIR=/var/tmp/guests/variant
CACHEDIR=/var/tmp/guests/cache
NAME=debian12-variant
FORCE=0
host_mirror() {   # the first Debian mirror of the host's apt sources; never fails
    {
        sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
        grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' || true
    } | grep -E '/debian/?$' | head -n 1 || true
}
MIRROR=${MIRROR:-$(host_mirror)}
SUITE=bookworm

usage() {
    echo "usage: $0 [-o OUTDIR] [-c CACHEDIR] [-m MIRROR] [-f]   (defaults: $OUTDIR, $CACHEDIR, $MIRROR)"
}
while getopts "o:c:m:fh" opt; do
    case $opt in
        o) OUTDIR=$OPTARG ;; c) CACHEDIR=$OPTARG ;; m) MIRROR=$OPTARG ;; f) FORCE=1 ;;
        h) usage; exit 0 ;; *) usage >&2; exit 2 ;;
    esac
done
[[ -n $MIRROR ]] || { echo "no Debian mirror found in the host apt sources; set MIRROR" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "must run as root (debootstrap, chroot)" >&2; exit 1; }
for t in debootstrap sfdisk guestfish sha256sum tar chroot; do
    command -v $t >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done

export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS-force_tcg}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

# ---------------------------------------------------------------- fixed identity
ROOT_UUID=7b1f3a5d-2e4c-4d6b-8f9a-0c1d2e3f4a51
BOOT_UUID=3dac9b8e-7f6a-4b5c-9d3e-2f1a0b9c8d72
HOME_UUID=5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716
SWAP_UUID=0a9f8e7d-6c5b-4a39-8271-605f4e3d2c1b
DISK0_GUID=6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0
DISK1_GUID=7a2b3c4d-5e6f-4a1b-9c2d-3e4f5a6b7c8d
MAC=00:50:56:a1:b2:c3          # VMware OUI; the MAC ../shared/guests/boot-test.sh gives the NIC
ADDR=192.168.122.50/24
NIC=ens160
SIZES_MIB="4096 1024"         # sda, sdb
ESP_MIB=100
BOOT_MIB=256
SWAP_MIB=256
PKGS="linux-image-amd64,grub-efi-amd64,systemd-sysv,udev,kmod,initramfs-tools,e2fsprogs,xfsprogs,lvm2,dosfstools,ifupdown,iproute2,netbase,procps,open-vm-tools,dbus,zstd"
# VMware virtual hardware's storage drivers + what root needs (dm for LVM, xfs); no virtio.
INITRD_MODULES="vmw_pvscsi mptspi mptsas megaraid_sas ata_piix ata_generic ahci sd_mod sr_mod dm_mod xfs ext4 crc32c_generic libcrc32c"

PKGHASH=$(printf '%s|%s|%s' "$SUITE" minbase "$PKGS" | sha256sum | cut -c1-12)
DEB_TARBALL=$CACHEDIR/debootstrap-$SUITE-$PKGHASH.tgz
ROOTFS=$CACHEDIR/rootfs-$NAME
mkdir -p "$OUTDIR" "$CACHEDIR"
OUTDIR=$(readlink -f "$OUTDIR"); CACHEDIR=$(readlink -f "$CACHEDIR")
WORK=$OUTDIR/.work
DISK0=$OUTDIR/$NAME-sda.raw
DISK1=$OUTDIR/$NAME-sdb.raw
mkdir -p "$WORK"
LOG=$OUTDIR/build.log
TIMINGS=$OUTDIR/timings.txt
: > "$TIMINGS"
exec > >(tee -a "$LOG") 2>&1
echo "=== $(date -Is) make-variant-guest.sh out=$OUTDIR"

# ---------------------------------------------------------------- helpers
step() {   # step NAME FUNCTION: run and time one step
    local name=$1 fn=$2 t0 t1
    echo "--- step $name"
    t0=$(date +%s.%N)
    "$fn"
    t1=$(date +%s.%N)
    awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "%-12s %8.1f s\n", n, b - a }' | tee -a "$TIMINGS"
}
unmount_under() {   # lazily unmount whatever a chroot left mounted below $1
    local m
    for m in $(findmnt -rn -o TARGET | grep -F "$1/" | sort -r); do umount -l "$m"; done
}
safe_rm_tree() { [[ -e $1 ]] || return 0; unmount_under "$1"; rm -rf --one-file-system "$1"; }
stamp_ok() { [[ -f $1 && "$(cat "$1")" == "$2" ]]; }   # stamp_ok STAMP RECIPE
in_chroot() {   # in_chroot CMD...: run in the root tree with proc/sys/dev mounted for the command only
    mount -t proc proc "$ROOTFS/proc"
    mount -t sysfs sys "$ROOTFS/sys"
    mount --bind /dev "$ROOTFS/dev"
    local rc=0
    chroot "$ROOTFS" "$@" || rc=$?
    unmount_under "$ROOTFS"
    return $rc
}
trap 'unmount_under "$ROOTFS"' EXIT

if [[ $FORCE -eq 1 ]]; then
    safe_rm_tree "$ROOTFS"; rm -rf "$WORK"; mkdir -p "$WORK"
    rm -rf "$DISK0" "$DISK1" "$OUTDIR/vmx" "$OUTDIR/SHA256SUMS"
fi

# ---------------------------------------------------------------- 1. debs and root tree
do_debs() {
    if [[ -s $DEB_TARBALL ]]; then echo "cached: $DEB_TARBALL"; return; fi
    local tmp=$CACHEDIR/mk-tarball-$PKGHASH.tmp
    rm -rf "$tmp" "$DEB_TARBALL.part"
    debootstrap --variant=minbase --arch=amd64 --include="$PKGS" \
        --make-tarball="$DEB_TARBALL.part" "$SUITE" "$tmp" "$MIRROR"
    rm -rf "$tmp"
    mv "$DEB_TARBALL.part" "$DEB_TARBALL"
}

do_rootfs() {
    if stamp_ok "$ROOTFS/.guest-recipe" "$ROOTFS_RECIPE"; then echo "cached: $ROOTFS"; return; fi
    safe_rm_tree "$ROOTFS"
    debootstrap --variant=minbase --arch=amd64 --include="$PKGS" \
        --unpack-tarball="$DEB_TARBALL" "$SUITE" "$ROOTFS" "$MIRROR"
    configure_tree
    echo "$ROOTFS_RECIPE" > "$ROOTFS/.guest-recipe"
}

configure_tree() {
    local R=$ROOTFS
    echo "$NAME" > "$R/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$NAME" > "$R/etc/hosts"
    printf 'nameserver 192.0.2.53\n' > "$R/etc/resolv.conf"
    printf 'deb %s bookworm main\n' "$MIRROR" > "$R/etc/apt/sources.list"
    # Kernel names where a VMware guest can have them; LVM volumes have no sdX name.
    cat > "$R/etc/fstab" <<EOF
# <file system>       <mount point>  <type>  <options>          <dump> <pass>
/dev/mapper/vg0-root  /              xfs     defaults           0      0
/dev/sda2             /boot          ext4    defaults           0      2
/dev/sda1             /boot/efi      vfat    umask=0077         0      1
/dev/sdb1             /home          ext4    defaults           0      2
/dev/mapper/vg0-swap  none           swap    sw                 0      0
/dev/sr0              /media/cdrom0  udf,iso9660 user,noauto    0      0
EOF
    mkdir -p "$R/media/cdrom0" "$R/boot/efi"
    cat > "$R/etc/network/interfaces" <<EOF
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

# VMware vmxnet3 in PCI slot 160
allow-hotplug $NIC
iface $NIC inet static
    address $ADDR
    gateway ${ADDR%.*}.1
EOF
    # Only the SCSI disks VMware gives this VM: an admin's filter, copied into the initramfs.
    sed -i 's|^devices {|devices {\n\tfilter = [ "a\|^/dev/sd[a-z]+[0-9]*$\|", "r\|.*\|" ]|' "$R/etc/lvm/lvm.conf"
    grep -q 'filter = \[ "a|^/dev/sd' "$R/etc/lvm/lvm.conf"
    sed -i -e 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=1/' \
           -e 's/^GRUB_CMDLINE_LINUX_DEFAULT=.*/GRUB_CMDLINE_LINUX_DEFAULT=""/' \
           -e 's/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"/' \
           "$R/etc/default/grub"
    cat >> "$R/etc/default/grub" <<'EOF'
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"
EOF
    sed -i 's/^MODULES=.*/MODULES=list/' "$R/etc/initramfs-tools/initramfs.conf"
    {
        echo "# VMware virtual hardware: storage controllers + root filesystem (no virtio)."
        for m in $INITRD_MODULES; do echo "$m"; done
    } > "$R/etc/initramfs-tools/modules"
    echo "RESUME=/dev/mapper/vg0-swap" > "$R/etc/initramfs-tools/conf.d/resume"
    mkdir -p "$R/home/user"
    echo "hello from the second disk" > "$R/home/user/hello.txt"
    cat > "$R/usr/local/sbin/guest-boot-marker" <<'EOF'
#!/bin/sh
# Prints one line starting with GUEST-BOOTED-OK to the serial console, then powers off.
list() { tr '\n' ',' | sed 's/,$//'; }
src() { findmnt -n -o SOURCE "$1" 2>/dev/null || echo none; }
fw=bios; [ -d /sys/firmware/efi ] && fw=uefi
pvs=$(pvs --noheadings -o pv_name 2>/dev/null | tr -d ' ' | list)
disks=$(ls /sys/block | grep -Ev '^(loop|ram|zram|sr|dm-)' | list)
nics=$(ls /sys/class/net | grep -v '^lo$' | list)
addrs=$(ip -o -4 addr show scope global 2>/dev/null | awk '{print $2 ":" $4}' | list)
mods=$(for m in virtio_pci virtio_blk virtio_scsi virtio_net vmw_pvscsi mptspi ata_piix ahci e1000 vmxnet3; do
        [ -d /sys/module/$m ] && echo $m; done | list)
tools=absent; [ -x /usr/bin/vmtoolsd ] && tools=present
failed=$(systemctl --failed --no-legend --plain 2>/dev/null | awk '{print $1}' | list)
msg="GUEST-BOOTED-OK host=$(hostname) kernel=$(uname -r) fw=$fw root=$(src /) root-pvs=${pvs:-none} boot=$(src /boot) esp=$(src /boot/efi) home=$(src /home) disks=$disks nics=$nics addrs=${addrs:-none} modules=$mods open-vm-tools=$tools failed-units=${failed:-none}"
# The kernel writes its console lines to ttyS0 straight, so one of them can land inside ours: start
# on a fresh line and say it three times (boot-test.sh matches the first that starts a line).
out=/dev/kmsg; [ -c /dev/ttyS0 ] && out=/dev/ttyS0
for i in 1 2 3; do printf '\r\n%s\r\n' "$msg" > $out; sleep 0.5; done
if [ -e /etc/guest-marker.nopoweroff ] || grep -qw guest.nopoweroff /proc/cmdline; then exit 0; fi
systemctl --no-block poweroff
EOF
    chmod 755 "$R/usr/local/sbin/guest-boot-marker"
    cat > "$R/etc/systemd/system/guest-boot-marker.service" <<'EOF'
[Unit]
Description=Boot marker for conversion tests (serial console) and power off
After=multi-user.target network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/guest-boot-marker

[Install]
WantedBy=multi-user.target
EOF
    in_chroot systemctl enable guest-boot-marker.service
    echo 'root:root' | in_chroot chpasswd
    in_chroot update-initramfs -u -k all
    in_chroot apt-get clean
    rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/tmp/* "$R"/var/tmp/*
    mkdir -p "$R/var/lib/apt/lists/partial"
}

# ---------------------------------------------------------------- 2. disks
do_disks() {
    if stamp_ok "$WORK/disks.stamp" "$DISKS_RECIPE" && [[ -s $DISK0 && -s $DISK1 ]]; then echo "cached: $DISK0 $DISK1"; return; fi
    rm -f "$WORK/disks.stamp" "$DISK0" "$DISK1"
    local sizes=($SIZES_MIB)
    truncate -s "${sizes[0]}M" "$DISK0.part"
    truncate -s "${sizes[1]}M" "$DISK1.part"
    sfdisk -q "$DISK0.part" <<EOF
label: gpt
label-id: $DISK0_GUID
unit: sectors

size=$((ESP_MIB * 2048)), type=uefi, name="EFI System Partition"
size=$((BOOT_MIB * 2048)), type=linux
type=lvm
EOF
    sfdisk -q "$DISK1.part" <<EOF
label: gpt
label-id: $DISK1_GUID
unit: sectors

type=linux
EOF
    tar -C "$ROOTFS" --exclude=./.guest-recipe -cf "$WORK/rootfs.tar" .
    # In the appliance the disks are /dev/sda and /dev/sdb, as on VMware's SCSI controller:
    # grub-install and update-grub run there with the guest's own tools.
    local rc=0
    guestfish --rw -a "$DISK0.part" -a "$DISK1.part" > "$WORK/guestfish.out" 2>&1 <<EOF || rc=$?
run
mkfs vfat /dev/sda1
mkfs ext4 /dev/sda2 label:boot
set-uuid /dev/sda2 $BOOT_UUID
pvcreate /dev/sda3
vgcreate vg0 /dev/sda3
lvcreate swap vg0 $SWAP_MIB
lvcreate-free root vg0 100
mkfs xfs /dev/vg0/root label:root
set-uuid /dev/vg0/root $ROOT_UUID
mkswap /dev/vg0/swap label:swap uuid:$SWAP_UUID
mkfs ext4 /dev/sdb1 label:home
set-uuid /dev/sdb1 $HOME_UUID
mount /dev/vg0/root /
mkdir /boot
mount /dev/sda2 /boot
mkdir /home
mount /dev/sdb1 /home
mkdir /boot/efi
mount /dev/sda1 /boot/efi
tar-in $WORK/rootfs.tar / xattrs:true
command "grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=debian --no-nvram"
command "update-grub"
echo ==== grub.cfg
cat /boot/grub/grub.cfg
echo ==== ESP
find /boot/efi
umount-all
EOF
    cat "$WORK/guestfish.out"
    rm -f "$WORK/rootfs.tar"
    [[ $rc -eq 0 ]] || { echo "guestfish failed (rc=$rc)" >&2; return 1; }
    grep -q "root=/dev/mapper/vg0-root" "$WORK/guestfish.out" || { echo "grub.cfg lacks the LVM root" >&2; return 1; }
    grep -q "^/EFI/debian/grubx64.efi" "$WORK/guestfish.out" || { echo "no grubx64.efi on the ESP" >&2; return 1; }
    mv "$DISK0.part" "$DISK0"; mv "$DISK1.part" "$DISK1"
    echo "$DISKS_RECIPE" > "$WORK/disks.stamp"
}

# ---------------------------------------------------------------- 3. vmx
do_vmx() {
    local d=$OUTDIR/vmx letter sectors
    if [[ -e $d/$NAME.vmx && $d/$NAME.vmx -nt $DISK0 && $d/$NAME.vmx -nt $DISK1 ]]; then echo "cached: $d/$NAME.vmx"; return; fi
    rm -rf "$d"; mkdir -p "$d"
    {
        cat <<EOF
.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "14"
firmware = "efi"
nvram = "$NAME.nvram"
pciBridge0.present = "TRUE"
pciBridge4.present = "TRUE"
pciBridge4.virtualDev = "pcieRootPort"
pciBridge4.functions = "8"
memSize = "1024"
numvcpus = "1"
displayName = "$NAME"
guestOS = "debian11-64"
scsi0.virtualDev = "pvscsi"
scsi0.present = "TRUE"
scsi0.pciSlotNumber = "192"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "VM Network"
ethernet0.addressType = "vpx"
ethernet0.generatedAddress = "$MAC"
ethernet0.present = "TRUE"
ethernet0.pciSlotNumber = "160"
uuid.bios = "42 12 a3 b4 c5 d6 47 e8-9f 0a 1b 2c 3d 4e 5f 70"
EOF
        for letter in a b; do
            local unit=$(( $(printf %d "'$letter") - 97 ))
            echo "scsi0:$unit.deviceType = \"scsi-hardDisk\""
            echo "scsi0:$unit.fileName = \"$NAME-sd$letter.vmdk\""
            echo "scsi0:$unit.present = \"TRUE\""
        done
    } > "$d/$NAME.vmx.part"
    for letter in a b; do
        local disk=$OUTDIR/$NAME-sd$letter.raw stem=$NAME-sd$letter
        # the flat extent IS the raw disk (a hard link): no copy, and one checksum covers both
        ln "$disk" "$d/$stem-flat.vmdk" 2>/dev/null || cp --sparse=always "$disk" "$d/$stem-flat.vmdk"
        sectors=$(( $(stat -c %s "$disk") / 512 ))
        cat > "$d/$stem.vmdk" <<EOF
# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=5a1e7c3e
parentCID=ffffffff
createType="vmfs"

# Extent description
RW $sectors VMFS "$stem-flat.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.thinProvisioned = "1"
ddb.virtualHWVersion = "14"
EOF
    done
    mv "$d/$NAME.vmx.part" "$d/$NAME.vmx"
}

do_sums() {
    if [[ -s $OUTDIR/SHA256SUMS && $OUTDIR/SHA256SUMS -nt $DISK0 && $OUTDIR/SHA256SUMS -nt $DISK1 ]]; then
        echo "cached: SHA256SUMS"; return; fi
    (cd "$OUTDIR" && sha256sum "$(basename "$DISK0")" "$(basename "$DISK1")" > SHA256SUMS)
}

# Each step's recipe is the code and the settings it uses, so that editing a later step (or a
# comment) does not rebuild the root tree (~9 min) or the disks (~7 min).
recipe() { sha256sum | cut -c1-16; }
ROOTFS_RECIPE=$( { declare -f do_rootfs configure_tree; echo "$NAME|$SUITE|$PKGS|$INITRD_MODULES|$NIC|$ADDR"; } | recipe)
DISKS_RECIPE=$( { echo "$ROOTFS_RECIPE"; declare -f do_disks
                  echo "$SIZES_MIB|$ESP_MIB|$BOOT_MIB|$SWAP_MIB|$ROOT_UUID|$BOOT_UUID|$HOME_UUID|$SWAP_UUID"
                  echo "$DISK0_GUID|$DISK1_GUID"; } | recipe)

step debs    do_debs
step rootfs  do_rootfs
step disks   do_disks
step vmx     do_vmx
step sums    do_sums
echo "=== done: $DISK0 $DISK1"
exit 0
}
