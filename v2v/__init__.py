"""v2v: convert guests from foreign hypervisors to KVM through four gRPC phase services."""

import os

# The services fork: libguestfs forks supermin and qemu, and we start nbdkit, qemu-nbd and
# nbdcopy. gRPC's fork handlers (on by default) abort such children ("epoll_wait error: Bad file
# descriptor", supermin killed by SIGABRT). Every child here execs at once, so they are not
# needed. Must be set before grpc is first imported: every v2v module imports this package first.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
