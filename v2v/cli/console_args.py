"""`--http ADDR` and `--read-only`: the fleet console of `v2v serve coordinator` and `v2v fleet`
(docs/console.md). The CLI only passes them on; the console is the coordinator's."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from v2v.cli.plan import parse_plan
from v2v.coordinator.console.server import ConsoleOptions, ConsoleServer
from v2v.tls import TLSFiles
from v2v.v1 import coordinator_pb2

if TYPE_CHECKING:
    from v2v.coordinator.service import CoordinatorService


def add_console_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("console: the fleet's web page (docs/console.md)")
    g.add_argument("--http", default="", metavar="HOST:PORT",
                   help="serve the console there: mutual TLS with --tls-dir, else behind a token printed at start "
                        "(a loopback address unless --insecure)")
    g.add_argument("--read-only", action="store_true", help="the console shows, and takes no action")


def plan_jobs(text: str) -> list[coordinator_pb2.GuestJob]:
    """A plan file submitted on the page, read as `v2v fleet` reads one (paths from this process's directory)."""
    return parse_plan(text, "submitted plan").jobs


@contextmanager
def console(service: CoordinatorService, a: argparse.Namespace, tls_dir: str = "") -> Iterator[ConsoleServer | None]:
    """The console of `service` while the context lasts, if --http asked for one; says where it is."""
    if not a.http:
        yield None
        return
    options = ConsoleOptions(a.http, TLSFiles.from_dir(tls_dir, "server") if tls_dir else None,
                             insecure=getattr(a, "insecure", False), read_only=a.read_only)
    with ConsoleServer(service, options, plan_jobs) as server:
        print(f"v2v console: {server.url}" + (" (read-only)" if a.read_only else ""), file=sys.stderr, flush=True)
        yield server
