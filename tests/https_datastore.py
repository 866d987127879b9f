"""A stand-in for an ESXi/vCenter datastore over HTTPS, for the tests of -i vmx -it https. It is NOT
VMware: it serves only what v2v asks of one (files of a directory at
https://127.0.0.1:PORT/folder/PATH?dcPath=DATACENTER&dsName=DATASTORE), the way ESXi's file access
does:

- basic auth on a request without a session, which then gets a `vmware_soap_session` cookie that
  later requests may carry instead (the log says which of the two each request used); with
  cookies=False no cookie is given out, and every request must log in;
- with session_seconds, a session ends that long after its login, and a request carrying its
  cookie then gets 401 as one without a login does (auth=expired in the log). vSphere ends a
  session after 30 minutes idle (its default); ending it a fixed time after the login, however
  busy, is stricter and what a test of renewal can wait for;
- with rate, the bodies of all answers together go out at most that many bytes a second, so that
  a copy of a few MiB outlives a session of a few seconds;
- 401 with a WWW-Authenticate challenge for a wrong or missing login, 404 for a file that is not
  there or a wrong dcPath/dsName;
- HEAD with Content-Length and Accept-Ranges: bytes, and single-range GETs answered 206 (nbdkit's
  curl plugin reads nothing else);
- a self-signed certificate (openssl req -x509), so that a client verifying certificates refuses it.

Run as a child process (`running_datastore`), not a thread: the NBD handshakes of the tests would
otherwise wait on this server from the very thread that has to answer them."""

from __future__ import annotations

import argparse
import base64
import re
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

COOKIE = "vmware_soap_session"
DATACENTER = "ha-datacenter"  # what ESXi names its one datacenter
DATASTORE = "datastore1"
USER = "root"
_CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class Datastore:
    port: int
    root: Path  # the datastore's top directory
    password_file: Path  # USER's password
    cert: Path  # the server's self-signed certificate
    log: Path  # one line per request: METHOD PATH auth=basic|cookie|none STATUS
    datacenter: str = DATACENTER  # the one dcPath it answers

    def url(self, path: str, user: str = USER, dc: str = "", ds: str = DATASTORE) -> str:
        """https://USER@127.0.0.1:PORT/folder/PATH?dcPath=DC&dsName=DS of a file relative to root
        (DC: its own datacenter unless given)."""
        who = f"{user}@" if user else ""
        dc = quote(dc or self.datacenter, safe="")
        return f"https://{who}127.0.0.1:{self.port}/folder/{quote(path)}?dcPath={dc}&dsName={quote(ds)}"

    def requests(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as curl expects; every answer carries its length
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request log below is the one the tests read

    def _record(self, auth: str, status: int) -> None:
        with open(self.server.log, "a") as f:
            f.write(f"{self.command} {self.path} auth={auth} {status}\n")

    def _answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _session(self) -> str:
        """"cookie" when the request carries a session cookie this server gave out, "expired" when
        that session has ended."""
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            ends = self.server.sessions.get(value.strip('"')) if name == COOKIE else None
            if ends is not None:
                return "cookie" if time.monotonic() < ends else "expired"
        return ""

    def _basic(self) -> bool:
        kind, _, token = self.headers.get("Authorization", "").partition(" ")
        if kind.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(token).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return secrets.compare_digest(f"{user}:{password}", f"{USER}:{self.server.password}")

    def _file(self) -> Path | None:
        """The file a /folder/PATH?dcPath=..&dsName=.. URL names, or None (404)."""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if query.get("dcPath") != [self.server.datacenter] or query.get("dsName") != [DATASTORE]:
            return None
        if not parts.path.startswith("/folder/"):
            return None
        rel = unquote(parts.path[len("/folder/"):])
        if not rel or ".." in rel.split("/"):
            return None
        path = self.server.root / rel  # symlinks in the root are followed: the tests link the guests in
        return path if path.is_file() else None

    def _serve(self) -> None:
        auth = self._session()
        headers: dict[str, str] = {}
        if auth != "cookie":
            if not self._basic():
                self._record(auth or "none", 401)
                self._answer(401, {"WWW-Authenticate": 'Basic realm="VMware HTTP server"'}, b"login required\n")
                return
            auth = "basic"
            if self.server.cookies:
                session = secrets.token_hex(16)
                lifetime = self.server.session_seconds or float("inf")
                self.server.sessions[session] = time.monotonic() + lifetime
                headers["Set-Cookie"] = f'{COOKIE}="{session}"; Path=/; HttpOnly; Secure'
        path = self._file()
        if path is None:
            self._record(auth, 404)
            self._answer(404, headers, b"not found\n")
            return
        size = path.stat().st_size
        headers |= {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        start, end, status = 0, size - 1, 200
        wanted = self.headers.get("Range") if self.command == "GET" else None
        if wanted:
            m = _RANGE.match(wanted.strip())
            if m is None or m.group(1) == m.group(2) == "":
                self._record(auth, 416)  # several ranges, or none: not something nbdkit asks
                self._answer(416, headers | {"Content-Range": f"bytes */{size}"})
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # bytes=-N: the last N bytes
                start = max(size - int(m.group(2)), 0)
            if start >= size or start > end:
                self._record(auth, 416)
                self._answer(416, headers | {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._record(auth, status)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                self.server.throttle(len(chunk))
                self.wfile.write(chunk)
                left -= len(chunk)

    def do_GET(self) -> None:
        try:
            self._serve()
        except (BrokenPipeError, ConnectionResetError):
            pass  # a client that read enough and left

    do_HEAD = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, root: Path, password: str, log: Path, cookies: bool, datacenter: str,
                 session_seconds: float, rate: int) -> None:
        self.root = root
        self.datacenter = datacenter
        self.cookies = cookies
        self.password = password
        self.log = log
        self.session_seconds = session_seconds  # 0: sessions never end
        self.sessions: dict[str, float] = {}  # cookie -> when its session ends (time.monotonic())
        self.rate = rate  # bytes/s of all answers' bodies together; 0: no limit
        self._sending = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def throttle(self, size: int) -> None:
        """Waits as long as sending `size` bytes takes at `rate`, one answer at a time."""
        if self.rate:
            with self._sending:
                time.sleep(size / self.rate)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def running_datastore(directory: Path, root: Path, password: str = "datastore-secret", cookies: bool = True,
                      datacenter: str = DATACENTER, timeout: float = 30, session_seconds: float = 0,
                      rate: int = 0) -> Iterator[Datastore]:
    """The stand-in serving `root` on 127.0.0.1:PORT inside the block as datastore DATASTORE of
    `datacenter` (a vCenter's inventory path, or ESXi's ha-datacenter); its files live in `directory`.
    session_seconds: how long a session lasts after its login (0: for ever); rate: bytes/s of the
    answers' bodies (0: no limit)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = make_certificate(directory)
    password_file = directory / "password"
    password_file.write_text(password + "\n")
    log, stderr = directory / "requests.log", directory / "server.log"
    port = _free_port()
    with open(stderr, "ab") as errf:
        proc = subprocess.Popen([sys.executable, __file__, "--port", str(port), "--root", str(root),
                                 "--cert", str(cert), "--key", str(key), "--password-file", str(password_file),
                                 "--log", str(log), "--datacenter", datacenter,
                                 "--session-seconds", str(session_seconds), "--rate", str(rate),
                                 *([] if cookies else ["--no-cookies"])],
                                stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the HTTPS datastore did not come up (exit status {proc.poll()}):\n"
                                     f"{stderr.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        yield Datastore(port, root, password_file, cert, log, datacenter)
    finally:
        from tests.processes import stop  # here: this file also runs as the server script

        stop(proc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--password-file", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--datacenter", default=DATACENTER, help="the dcPath it answers (default: %(default)s)")
    p.add_argument("--no-cookies", action="store_true", help="give out no session cookie: basic auth every time")
    p.add_argument("--session-seconds", type=float, default=0, help="a session ends this long after its login")
    p.add_argument("--rate", type=int, default=0, help="bytes/s of all answers' bodies together")
    a = p.parse_args()
    server = _Server(a.port, a.root, a.password_file.read_text().rstrip("\r\n"), a.log, not a.no_cookies,
                     a.datacenter, a.session_seconds, a.rate)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    # the handshake in the thread of each connection: a client that connects and never speaks TLS
    # must not stall the accept loop
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    server.serve_forever()


if __name__ == "__main__":
    main()
