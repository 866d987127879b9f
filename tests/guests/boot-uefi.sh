#!/usr/bin/env bash
# boot-uefi.sh - boot-test.sh with UEFI firmware: boots IMAGE... under OVMF and waits for the guest's
# marker line. Takes boot-test.sh's options (-b BUS, -m pc|q35, -t S, -l LOG, ...).
#
# boot-test.sh (../shared/guests) has no option for firmware or extra QEMU arguments, and its
# marker-wait logic should not be copied. So this script puts a qemu-system-x86_64 in front of the
# real one on PATH that adds the OVMF code (read-only) and a private copy of its variables template
# (a fresh NVRAM: no boot entries, as a converted guest gets), then runs boot-test.sh unchanged.
#
# Environment: OVMF_CODE, OVMF_VARS (default: Debian's 4 MiB build), V2V_SHARED (default ../shared).
set -euo pipefail

HERE=$(dirname "$(readlink -f "$0")")
SHARED=${V2V_SHARED:-$HERE/../../../shared}
OVMF_CODE=${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}
OVMF_VARS=${OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}
for f in "$OVMF_CODE" "$OVMF_VARS" "$SHARED/guests/boot-test.sh"; do
    [[ -r $f ]] || { echo "boot-uefi: missing $f" >&2; exit 2; }
done
QEMU=$(command -v qemu-system-x86_64) || { echo "boot-uefi: no qemu-system-x86_64" >&2; exit 2; }

shim=$(mktemp -d -t boot-uefi.XXXXXX)
trap 'rm -rf "$shim"' EXIT
cp "$OVMF_VARS" "$shim/vars.fd"
cat > "$shim/qemu-system-x86_64" <<EOF
#!/bin/sh
exec "$QEMU" -drive if=pflash,format=raw,unit=0,readonly=on,file="$OVMF_CODE" \\
    -drive if=pflash,format=raw,unit=1,file="$shim/vars.fd" "\$@"
EOF
chmod 755 "$shim/qemu-system-x86_64"
echo "boot-uefi: firmware $OVMF_CODE, fresh variables from $OVMF_VARS"
PATH=$shim:$PATH "$SHARED/guests/boot-test.sh" "$@"
