"""The Verify service: boots a guest's disks in a throw-away qemu and reports how it came up."""
