"""Convert service: libguestfs on the input's sockets; inspects and converts the guest."""
