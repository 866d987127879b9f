"""`v2v serve` runs one service in its own process; grpcurl drives it through server reflection
and health checks, with no proto files: the input service alone opens a guest for any NBD tool."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import V2V, sha256

GRPCURL = Path(sys.executable).parent / "grpcurl"


def grpcurl(sock, *args, data=None):
    cmd = [GRPCURL, "-plaintext", "-unix"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    p = subprocess.run([*cmd, str(sock), *args], capture_output=True, text=True, timeout=60, check=False)
    return p


@pytest.fixture
def input_service(tmp_path, workroot):
    sock = tmp_path / "input.sock"
    proc = subprocess.Popen([V2V, "serve", "input", "--listen", f"unix:{sock}"], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, V2V_WORKDIR_ROOT=str(workroot)))
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "v2v serve input did not start"
        time.sleep(0.1)
    yield sock
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def test_reflection_and_health(input_service):
    assert oct(input_service.stat().st_mode & 0o777) == "0o600"
    listed = grpcurl(input_service, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"v2v.v1.Input", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    health = grpcurl(input_service, "grpc.health.v1.Health/Check", data={"service": "v2v.v1.Input"})
    assert json.loads(health.stdout) == {"status": "SERVING"}


def test_input_alone_opens_a_guest_for_nbd_tools(input_service, phony, workroot):
    disk = phony / "debian-single.img"
    before = sha256(disk)
    wd = workroot / "g1"
    opened = grpcurl(input_service, "v2v.v1.Input/Open",
                     data={"workdir": "g1", "guest": "g1", "input": {"disk": {"paths": [str(disk)]}}})
    assert opened.returncode == 0, opened.stderr
    resp = json.loads(opened.stdout)
    assert resp["source"]["name"] == "debian-single" and resp["sockets"] == [str(wd / "in0.sock")]
    info = subprocess.run(["nbdinfo", "--json", f"nbd+unix:///?socket={wd}/in0.sock"], capture_output=True,
                          text=True, check=True)
    assert json.loads(info.stdout)["exports"][0]["export-size"] == disk.stat().st_size
    closed = grpcurl(input_service, "v2v.v1.Input/Close", data={"workdir": "g1"})
    assert closed.returncode == 0, closed.stderr
    assert not (wd / "in0.sock").exists()
    assert sha256(disk) == before


def test_structured_error_over_the_wire(input_service, workroot):
    r = grpcurl(input_service, "v2v.v1.Input/Open",
                data={"workdir": "g2", "guest": "g2", "input": {"disk": {"paths": ["/nonexistent.img"]}}})
    assert r.returncode != 0
    assert "InvalidArgument" in r.stderr and "guest g2: step open: /nonexistent.img: no such file" in r.stderr
