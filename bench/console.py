#!/usr/bin/env python3
"""Benchmark: the fleet console (docs/console.md) with a 500-guest plan queued.

    .venv/bin/python bench/console.py [--guests 500] [--events 20] [--loads 3]

A real coordinator (embedded services, its scheduler and SQLite state) in this process, every guest
held in the queue behind a ticket that holds the only slot of their source host, and its console
opened in Debian's chromium (headless, through selenium). Prints, for --loads page loads: the time
to first contentful paint and to the first rows drawn, and the size of the fleet's JSON; then the
event latency at the page for --events cancels, each one after the stream's batching interval
(events closer together come in one message, at most ten a second): from the coordinator's cancel
call to the row's new state drawn in the page (both clocks are this machine's); and the
coordinator's Status latency with and without the page open (a page must not slow the coordinator).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.test_console import chromium, source_only  # noqa: E402
from v2v.client import FleetClient  # noqa: E402
from v2v.coordinator.console.app import MIN_INTERVAL  # noqa: E402
from v2v.coordinator.console.server import ConsoleOptions, ConsoleServer  # noqa: E402
from v2v.coordinator.scheduler import Limits  # noqa: E402
from v2v.coordinator.servers import EmbeddedServices  # noqa: E402

# Installed before the page's own scripts: the moment the guests' table first has rows.
FIRST_ROWS = """
window.firstRows = null;
new MutationObserver((changes, observer) => {
  const body = document.querySelector('#guests tbody');
  if (body && body.children.length) { window.firstRows = performance.now(); observer.disconnect(); }
}).observe(document, {childList: true, subtree: true});
"""
# After the load: when each cancelled guest's row is first drawn as cancelled (epoch ms).
WATCH_CANCELLED = """
window.seen = {};
const body = document.querySelector('#guests tbody');
new MutationObserver(() => {
  for (const tr of body.querySelectorAll('tr[data-state="cancelled"]'))
    if (!(tr.dataset.guest in window.seen)) window.seen[tr.dataset.guest] = Date.now();
}).observe(body, {childList: true});
"""


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values):.0f} ms, min {min(values):.0f}, max {max(values):.0f}"


def status_times(fleet: FleetClient, gid: str, calls: int = 200) -> list[float]:
    times = []
    for _ in range(calls):
        t0 = time.monotonic()
        fleet.status(gid)
        times.append((time.monotonic() - t0) * 1000)
    return times


def wait(driver: object, script: str, *args: object) -> object:
    """Asks the page until the script answers something (a wait, not a measure)."""
    while (answer := driver.execute_script(script, *args)) is None:  # type: ignore[attr-defined]
        time.sleep(0.01)
    return answer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--guests", type=int, default=500)
    p.add_argument("--events", type=int, default=20, help="cancels whose latency at the page is measured")
    p.add_argument("--loads", type=int, default=3, help="page loads timed")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="v2v-bench.", dir="/tmp") as d:
        root = Path(d)
        disk = root / "disk.img"
        disk.write_bytes(b"\0" * 65536)  # never opened: every guest stays queued
        services = EmbeddedServices(root / "work", limits=Limits(per_source_host=1), state=root / "s.db")
        with services as address, FleetClient(address) as fleet, \
                ConsoleServer(services.coordinator, ConsoleOptions("127.0.0.1:0")) as console:
            scheduler = services.coordinator.scheduler
            holder = scheduler.ticket("bench", 100, "localhost")
            with scheduler.admitted(holder):
                t0 = time.monotonic()
                ids = fleet.submit([source_only(f"guest{n:03d}", disk) for n in range(a.guests)])
                print(f"{a.guests} guests submitted in {time.monotonic() - t0:.2f} s, all queued")
                idle = status_times(fleet, ids[0])
                base, token = console.url.split("?token=")
                size = len(urllib.request.urlopen(urllib.request.Request(
                    base + "api/fleet", headers={"authorization": f"Bearer {token}"}), timeout=30).read())
                driver = chromium()
                try:
                    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": FIRST_ROWS})
                    driver.get(console.url)  # the token, traded for the cookie
                    paints, rows = [], []
                    for _ in range(a.loads):
                        driver.get(base)
                        rows.append(float(wait(driver, "return window.firstRows")))  # type: ignore[arg-type]
                        paints.append(float(driver.execute_script(  # type: ignore[arg-type]
                            "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                            "return p ? p.startTime : null")))
                    print(f"page load ({a.loads} loads, {a.guests} rows, /api/fleet {size / 1024:.0f} KiB): "
                          f"first paint {ms(paints)}; first rows drawn {ms(rows)}")
                    driver.find_element("css selector", '#states .card[data-state="cancelled"]').click()
                    driver.execute_script(WATCH_CANCELLED)
                    latencies = []
                    for n in range(a.events):
                        name = f"guest{n:03d}"
                        time.sleep(MIN_INTERVAL * 2)  # past the stream's batching of the last event
                        sent = time.time() * 1000
                        services.coordinator.cancel(ids[n])
                        drawn = float(wait(driver, "return window.seen[arguments[0]] ?? null", name))  # type: ignore[arg-type]
                        latencies.append(drawn - sent)
                    print(f"event latency at the page ({a.events} cancels): {ms(latencies)}")
                    busy = status_times(fleet, ids[-1])
                    print(f"Status with no page: {ms(idle)}; with the page open: {ms(busy)}")
                finally:
                    driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
