"""Output service: creates the target disks, serves them for the copy, then describes the guest."""
