"""The fleet console (docs/console.md) in a real browser (Debian's chromium through its
chromedriver, driven by selenium) over a coordinator with the real services and phony guests: the
rows change state live, a queued guest is cancelled from the page, the guest failing in convert
(no OS: one appliance launch) shows its error and step timeline, and retry runs it again. Then who
may use it: the token of a plaintext console, the client certificate of a TLS one, read-only.

`V2V_CONSOLE_SCREENSHOTS=docs` writes the fleet and guest pages' screenshots there (docs/console.md
shows them); otherwise they go to the test's own directory."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import V2V
from v2v.cli.certs_cmd import certs_main
from v2v.cli.console_args import plan_jobs
from v2v.client import FleetClient
from v2v.coordinator.console.server import ConsoleOptions, ConsoleServer
from v2v.coordinator.metrics import FleetMetrics
from v2v.coordinator.scheduler import Limits
from v2v.coordinator.servers import EmbeddedServices
from v2v.coordinator.steplogs import StepLogs
from v2v.errors import V2VError
from v2v.events import step_event
from v2v.tls import TLSFiles
from v2v.v1 import convert_pb2, coordinator_pb2, input_pb2, output_pb2
from v2v.v1 import types_pb2 as pb

GS = coordinator_pb2
REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LONG = 900  # seconds: an appliance launch under TCG on a loaded machine; a bound, not a measure


def source_only(name: str, disk: Path) -> coordinator_pb2.GuestJob:
    return GS.GuestJob(name=name, print_source=True,
                       input=input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[str(disk)])))


def no_os(name: str, disk: Path, out: Path) -> coordinator_pb2.GuestJob:
    """A guest that fails in convert: its disk has no operating system."""
    return GS.GuestJob(name=name, input=input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=[str(disk)])),
                       output=output_pb2.OutputSpec(local=output_pb2.LocalOutput(directory=str(out))),
                       convert=convert_pb2.ConvertOptions(accelerator=convert_pb2.ACCELERATOR_TCG))


def chromium() -> webdriver.Chrome:
    """Debian's chromium through Debian's chromedriver (named, so selenium fetches no driver)."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1000",
                "--disable-gpu"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver: webdriver.Chrome, selector: str, attribute: str = "") -> dict[str, str]:
    """Each element's key attribute -> its text (or `attribute`), read in one call: the page redraws
    its rows as events come, so element references from before a redraw are stale."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll(arguments[0])].map(e => [e.getAttribute("
        "e.dataset.guest !== undefined ? 'data-guest' : e.dataset.host !== undefined ? 'data-host' : 'data-state'),"
        " arguments[1] ? e.getAttribute(arguments[1]) : e.innerText]))", selector, attribute)


def row_states(driver: webdriver.Chrome) -> dict[str, str]:
    return text_of(driver, "#guests tbody tr", "data-state")


def wait_for(driver: webdriver.Chrome, what: str, check: object, timeout: float = 60) -> None:
    WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: check(d), message=what)  # type: ignore[operator]


def click(driver: webdriver.Chrome, selector: str) -> None:
    """Clicks the element, found again if the page redrew it between finding and clicking."""
    wait_for(driver, f"a click on {selector}",
             lambda d: d.find_element(By.CSS_SELECTOR, selector).click() or True)  # type: ignore[func-returns-value]


def screenshot_dir(tmp_path: Path) -> Path:
    where = os.environ.get("V2V_CONSOLE_SCREENSHOTS")
    return (REPO / where) if where else tmp_path


def test_the_page_follows_the_fleet(phony, workroot, tmp_path, browser):
    disk, out = phony / "debian-single.img", tmp_path / "out"
    out.mkdir()
    services = EmbeddedServices(workroot, limits=Limits(per_source_host=1), state=tmp_path / "s.db")
    with services as address, FleetClient(address) as fleet, \
            ConsoleServer(services.coordinator, ConsoleOptions("127.0.0.1:0"), plan_jobs) as console:
        scheduler = services.coordinator.scheduler
        holder = scheduler.ticket("test", 100, "localhost")
        with scheduler.admitted(holder):  # the source host's only slot: every guest queues behind it
            fleet.submit([source_only("web1", disk), source_only("web2", disk), no_os("db1", phony / "data-nofs-os.img",
                          out), source_only("web3", disk), source_only("spare", disk)])
            browser.get(console.url)
            assert "token" not in browser.current_url  # traded for a cookie
            wait_for(browser, "five queued rows", lambda d: len(d.find_elements(
                By.CSS_SELECTOR, '#guests tr[data-state="queued"]')) == 5)
            browser.execute_script("window.sameLoad = true")
            click(browser, '#guests tr[data-guest="spare"] button[data-action="cancel"]')
            wait_for(browser, "spare cancelled", lambda d: row_states(d).get("spare") == "cancelled")
        # The guests run now, one at a time: the page sees each row change, without a reload.
        wait_for(browser, "web1..3 succeeded, db1 failed", lambda d: row_states(d) == {
            "web1": "succeeded", "web2": "succeeded", "web3": "succeeded", "db1": "failed", "spare": "cancelled"},
            timeout=LONG)
        assert browser.execute_script("return window.sameLoad") is True
        cards = {k: v.split() for k, v in text_of(browser, "#states .card").items()}
        assert cards == {"all": ["all", "5"], "running": ["running", "0"], "queued": ["queued", "0"],
                         "failed": ["failed", "1"], "cancelled": ["cancelled", "1"], "succeeded": ["succeeded", "3"]}
        hosts = text_of(browser, "#hosts tbody tr")
        assert hosts["localhost"].split()[:4] == ["localhost", "0", "1", "0"]  # reading now, limit, queued
        assert "failed (convert)" in text_of(browser, "#guests tbody tr")["db1"]
        shots = screenshot_dir(tmp_path)
        browser.save_screenshot(str(shots / "console-fleet.png"))

        click(browser, '#guests tr[data-guest="db1"] a')
        wait_for(browser, "db1's error", lambda d: d.find_elements(By.CSS_SELECTOR, '#error dd[data-field="step"]'))
        error = {e.get_attribute("data-field"): e.text for e in browser.find_elements(By.CSS_SELECTOR, "#error dd")}
        assert error["guest"] == "db1" and error["step"] == "convert" and error["cause"] == "NO_OS", error
        assert "no operating system" in error["message"]
        wait_for(browser, "db1's timeline", lambda d: d.find_elements(
            By.CSS_SELECTOR, '#timeline tr[data-step="convert"][data-attempt="1"][data-outcome="failed"]'))
        phases = [(r.get_attribute("data-step"), r.get_attribute("data-outcome"))
                  for r in browser.find_elements(By.CSS_SELECTOR, '#timeline tr.phase[data-attempt="1"]')]
        assert phases[:3] == [("open", "succeeded"), ("check", "succeeded"), ("convert", "failed")], phases
        click(browser, '#logs details[data-step="convert"] summary')
        wait_for(browser, "the convert step's appliance log",
                 lambda d: "convert-appliance.log" in d.find_element(By.ID, "logs").text)
        browser.save_screenshot(str(shots / "console-guest.png"))

        click(browser, 'button[data-action="retry"][data-from="open"]')
        wait_for(browser, "db1 running again", lambda d: d.find_elements(
            By.CSS_SELECTOR, '#timeline tr[data-step="open"][data-attempt="2"]'), timeout=LONG)
        retried = services.coordinator.guests[fleet_id(fleet, "db1")].rec
        assert retried.attempt == 2

        # A reloaded page starts from the stream's position at its load, not from the first event.
        browser.get(console.url.split("?")[0])
        wait_for(browser, "the reloaded fleet",
                 lambda d: len(d.find_elements(By.CSS_SELECTOR, "#guests tbody tr")) == 5)
        first = min(fe.seq for fe in services.coordinator.events(0, 0)[1])
        assert browser.execute_script("return window.v2vStreamFrom") > first

        # The same coordinator's read-only console: no actions on the page, and none taken.
        with ConsoleServer(services.coordinator, ConsoleOptions("127.0.0.1:0", read_only=True)) as view:
            browser.get(view.url.replace("/?", f"/guest/{retried.id}?"))
            wait_for(browser, "the read-only guest page", lambda d: d.find_element(By.ID, "name").text == "db1")
            assert browser.find_elements(By.CSS_SELECTOR, "button[data-action]") == []
            answer = browser.execute_async_script(
                "const done = arguments[1]; fetch('/api/guests/' + arguments[0] + '/cancel', {method: 'POST', "
                "headers: {'x-v2v-console': '1'}}).then(r => done(r.status))", retried.id)
            assert answer == 403
        fleet.cancel(retried.id)


def fleet_id(fleet: FleetClient, name: str) -> str:
    return next(s.id for s in fleet.list() if s.name == name)


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET",
          context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body), redirects not followed."""
    class Keep(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object) -> None:
            return None

    opener = urllib.request.build_opener(Keep, urllib.request.HTTPSHandler(context=context))
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=b"{}" if method == "POST" else None)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture
def coordinator(workroot, tmp_path) -> Iterator[EmbeddedServices]:
    services = EmbeddedServices(workroot, state=tmp_path / "s.db")
    with services:
        yield services


def test_a_plaintext_console_needs_its_token(coordinator):
    with ConsoleServer(coordinator.coordinator, ConsoleOptions("127.0.0.1:0"), plan_jobs) as console:
        base, token = console.url.split("?token=")
        for path, method in (("", "GET"), ("api/fleet", "GET"), ("api/events", "GET"), ("static/fleet.js", "GET"),
                             ("api/plan", "POST")):
            assert fetch(base + path, method=method)[0] == 401, path
            assert fetch(base + path, {"authorization": "Bearer wrong"}, method)[0] == 401, path
        status, headers, _ = fetch(console.url)
        assert status == 303 and headers["location"] == base
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
        assert fetch(base + "api/fleet", {"cookie": cookie})[0] == 200
        status, _, body = fetch(base + "api/fleet", {"authorization": f"Bearer {token}"})
        assert status == 200 and json.loads(body)["read_only"] is False
        # an action needs the console's own header too: another site's form cannot send it
        bearer = {"authorization": f"Bearer {token}"}
        assert fetch(base + "api/guests/nosuch/cancel", bearer, "POST")[0] == 403
        status, _, body = fetch(base + "api/guests/nosuch/cancel", {**bearer, "x-v2v-console": "1"}, "POST")
        assert status == 404 and "no guest" in json.loads(body)["error"]


def test_a_read_only_console_refuses_actions(coordinator):
    with ConsoleServer(coordinator.coordinator, ConsoleOptions("127.0.0.1:0", read_only=True), plan_jobs) as console:
        base, token = console.url.split("?token=")
        auth = {"authorization": f"Bearer {token}", "x-v2v-console": "1"}
        snap = json.loads(fetch(base + "api/fleet", auth)[2])
        assert snap["read_only"] is True and snap["can_submit"] is False
        for path in ("api/guests/x/cancel", "api/guests/x/retry", "api/plan"):
            assert fetch(base + path, auth, "POST")[0] == 403, path


def test_a_tls_console_needs_a_client_certificate(coordinator, tmp_path):
    tls_dir = tmp_path / "tls"
    assert certs_main([str(tls_dir)]) == 0
    server, client = TLSFiles.from_dir(tls_dir, "server"), TLSFiles.from_dir(tls_dir, "client")
    with ConsoleServer(coordinator.coordinator, ConsoleOptions("127.0.0.1:0", tls=server)) as console:
        assert console.url.startswith("https://") and "token" not in console.url
        anonymous = ssl.create_default_context(cafile=str(server.ca))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            fetch(console.url + "api/fleet", context=anonymous)
        known = ssl.create_default_context(cafile=str(client.ca))
        known.load_cert_chain(str(client.cert), str(client.key))
        assert fetch(console.url + "api/fleet", context=known)[0] == 200


def test_plaintext_beyond_loopback_only_when_asked(coordinator):
    with pytest.raises(V2VError, match="without TLS"):
        ConsoleServer(coordinator.coordinator, ConsoleOptions("0.0.0.0:0"))
    with ConsoleServer(coordinator.coordinator, ConsoleOptions("0.0.0.0:0", insecure=True)) as console:
        base, token = console.url.split("?token=")
        assert fetch(base + "api/fleet")[0] == 401  # still behind the token
        assert fetch(base + "api/fleet", {"authorization": f"Bearer {token}"})[0] == 200


def test_serve_coordinator_prints_the_console(workroot, tmp_path):
    """`v2v serve coordinator --http`: the address with its token on stderr, the console answering."""
    proc = subprocess.Popen([str(V2V), "serve", "coordinator", "--listen", f"unix:{workroot}/c.sock",
                             "--embedded", "1", "--state", str(tmp_path / "s.db"), "--http", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, V2V_WORKDIR_ROOT=str(workroot)))
    try:
        said = []
        for line in proc.stderr:
            said.append(line)
            if found := re.search(r"v2v console: (\S+)", line):
                break
        assert found, "".join(said)
        base, token = found.group(1).split("?token=")
        assert fetch(base + "api/fleet", {"authorization": f"Bearer {token}"})[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, rest


def test_the_grafana_dashboard_asks_for_the_coordinators_metrics():
    """deploy/grafana-dashboard.json names only metrics FleetMetrics exports (a renamed metric
    would leave its panel empty, silently)."""
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = {m.name + end for m in FleetMetrics().registry.collect() for end in suffixes[m.type]}
    asked = {name for panel in dashboard["panels"] for t in panel.get("targets", [])
             for name in re.findall(r"\bv2v_[a-z_]+", t["expr"])}
    assert asked and asked <= exported, asked - exported


def first_message(url: str, headers: dict[str, str]) -> tuple[int, dict]:
    """The stream's first `rows` message: (its id, its data)."""
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as stream:
        seq = 0
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("data: "):
                return seq, json.loads(line[6:])
    raise AssertionError("the stream ended")


def test_a_plan_submitted_and_the_stream_resumed(workroot, tmp_path):
    """A plan file posted as the page does becomes the coordinator's guests; a stream asked after a
    sequence number (or with Last-Event-ID) brings only the rows changed since."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 65536)
    services = EmbeddedServices(workroot, limits=Limits(per_source_host=1), state=tmp_path / "s.db")
    with services, ConsoleServer(services.coordinator, ConsoleOptions("127.0.0.1:0"), plan_jobs) as console:
        service = services.coordinator
        base, token = console.url.split("?token=")
        auth = {"authorization": f"Bearer {token}"}
        act = {**auth, "x-v2v-console": "1"}
        before = json.loads(fetch(base + "api/fleet", auth)[2])["seq"]
        holder = service.scheduler.ticket("test", 100, "localhost")
        with service.scheduler.admitted(holder):  # the source host's slot: the plan's guests stay queued
            plan = "guests:\n" + "".join(f"  - {{name: {n}, input: {{type: disk, files: [{disk}]}}, "
                                          "output: {type: 'null'}}\n" for n in ("p1", "p2"))
            req = urllib.request.Request(base + "api/plan", data=plan.encode(), headers=act, method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                ids = json.loads(r.read())["submitted"]
            assert [service.guests[gid].rec.name for gid in ids] == ["p1", "p2"]
            seq, msg = first_message(f"{base}api/events?after={before}", auth)
            assert [(r["name"], r["state"]) for r in msg["rows"]] == [("p1", "queued"), ("p2", "queued")]
            assert seq > before and msg["summary"]["states"]["queued"] == 2
            assert fetch(base + f"api/guests/{ids[1]}/cancel", act, "POST")[0] == 200
            # resumed after `seq` (as a browser reconnects: Last-Event-ID wins over ?after=): p2 alone
            _, resumed = first_message(base + "api/events?after=0", {**auth, "last-event-id": str(seq)})
            assert [(r["name"], r["state"]) for r in resumed["rows"]] == [("p2", "cancelled")]
            fetch(base + f"api/guests/{ids[0]}/cancel", act, "POST")  # before it could run
        bad = urllib.request.Request(base + "api/plan", data=b"guests:\n  - {name: x, input: {type: dsk}}\n",
                                     headers=act, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=10)
        assert refused.value.code == 400 and "guest x" in json.loads(refused.value.read())["error"]


def test_fleet_serves_the_console_while_it_runs(phony, workroot, tmp_path):
    """`v2v fleet plan.yaml --http`: the embedded coordinator's console, its address printed, for the
    command's life; the plan's guest (a print-source job: its disk opened, nothing converted) ends."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"guests:\n  - job: {{name: look, print_source: true, input: {{disk: {{paths: "
                    f"[{phony / 'debian-single.img'}]}}}}}}\n")
    env = dict(os.environ, V2V_WORKDIR_ROOT=str(workroot))
    res = subprocess.run([str(V2V), "fleet", str(plan), "--state", str(tmp_path / "s.db"), "--machine-readable",
                          "--http", "127.0.0.1:0", "--read-only"], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert re.search(r"v2v console: http://127\.0\.0\.1:\d+/\?token=\S+ \(read-only\)", res.stderr), res.stderr
    refused = subprocess.run([str(V2V), "fleet", str(plan), "--coordinator", "unix:/nonexistent", "--http",
                              "127.0.0.1:0"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert refused.returncode == 2 and "--http: embedded only" in refused.stderr


def test_a_guest_page_shows_its_boot_check(workroot, tmp_path):
    """The boot check as a guest's page tells it: the verify step's notes, and the console's last
    lines of a guest that did not boot (the error's detail). A real boot check takes a converted
    guest and minutes (tests/test_verify.py); here the coordinator's own event sink is given the
    events a failed one sends, and the console reads them back from the step log and the state."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 65536)
    services = EmbeddedServices(workroot, limits=Limits(per_source_host=1), state=tmp_path / "s.db")
    with services, ConsoleServer(services.coordinator, ConsoleOptions("127.0.0.1:0")) as console:
        service = services.coordinator
        holder = service.scheduler.ticket("test", 100, "localhost")
        with service.scheduler.admitted(holder):
            (gid,) = service.submit([source_only("booted", disk)])
            service.cancel(gid)
        guest = service.guests[gid]
        guest.logs = StepLogs(service.logs_root, gid, guest.rec.attempt)
        for ev in (step_event("booted", "verify", pb.STEP_STATE_STARTED),
                   step_event("booted", "verify", pb.STEP_STATE_NOTE, message="expect: NIC ens192; mounts /"),
                   step_event("booted", "verify", pb.STEP_STATE_FAILED, seconds=42.0,
                              error=V2VError("the converted guest did not boot", pb.ERROR_CODE_BOOT_FAILED))):
            service._sink(guest, pb.Event(step=ev))
        service._end(guest, V2VError("the converted guest did not boot: no marker", pb.ERROR_CODE_BOOT_FAILED,
                                     step="verify", detail="[  3.1] Kernel panic\n[  3.2] end Kernel panic"),
                     GS.GUEST_STATE_FAILED)
        base, token = console.url.split("?token=")
        page = json.loads(fetch(f"{base}api/guests/{gid}", {"authorization": f"Bearer {token}"})[2])
        assert page["boot"] == {"notes": [{"message": "expect: NIC ens192; mounts /", "warning": False}],
                                "console_tail": ["[  3.1] Kernel panic", "[  3.2] end Kernel panic"]}
        assert page["row"]["error"]["code"] == "BOOT_FAILED" and page["row"]["error"]["step"] == "verify"
        assert [(s["step"], s["state"], s["duration"]) for s in page["steps"]] == [("verify", "failed", 42.0)]
