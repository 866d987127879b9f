"""The compose deployment for real: a Docker engine (started here when none runs, as
deploy/docker-engine.sh does it), the two images built once, the six containers up, and the real
guest converted through them by a client on the host over mutual TLS, with the verify container's
boot check: the result boots.

Cost on 2 cores: engine + base image ~25 s, images ~3-6 min the first time (cached afterwards),
`up` ~15 s, the conversion ~2-3 min, the boot check ~1-2 min."""

import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, V2V, sha256

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

ENGINE = REPO / "deploy" / "docker-engine.sh"
SERVICE_UID = 10000  # the images' v2v user (deploy/Dockerfile)
CA_CERTS = Path("/usr/local/share/ca-certificates")


def run(*cmd: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout, check=False)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{p.stdout[-3000:]}{p.stderr[-3000:]}"
    return p.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_dir(path: Path) -> Path:
    """A host directory the services' user owns, as docs/deploy.md says to make it."""
    path.mkdir(mode=0o700)
    os.chown(path, SERVICE_UID, SERVICE_UID)
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[None]:
    """A Docker engine: the one that answers, else one started here and stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the Docker engine needs root")
    state = tmp_path_factory.mktemp("dockerd")
    env = dict(os.environ, V2V_DOCKERD_STATE=str(state))
    run(ENGINE, "setup", env=env)
    run(ENGINE, "start", env=env, timeout=120)
    try:
        run(ENGINE, "base-image", env=env)
        yield
    finally:
        run(ENGINE, "stop", env=env, timeout=120)


@pytest.fixture(scope="module")
def stack(engine, real_guest, tmp_path_factory) -> Iterator[dict]:
    """The five services up, from images built once; torn down with their volumes afterwards."""
    top = tmp_path_factory.mktemp("deploy")
    out, run_dir = private_dir(top / "out"), private_dir(top / "run")
    tls = top / "tls"
    run(V2V, "certs", tls)
    for path in (tls, *tls.iterdir()):
        os.chown(path, SERVICE_UID, SERVICE_UID)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("V2V_")} | {
        "V2V_INPUT_DIR": str(real_guest.parent), "V2V_OUTPUT_DIR": str(out), "V2V_SOCKET_DIR": str(run_dir),
        "V2V_TLS_DIR": str(tls), "V2V_LISTEN": f"127.0.0.1:{port}", "COMPOSE_BAKE": "false",
        "V2V_EXTRA_CA_CERTS": "".join(p.read_text() for p in sorted(CA_CERTS.glob("*.crt"))),
    }
    project = f"v2v-test-{os.getpid()}"
    compose = ["docker", "compose", "-p", project, "-f", str(REPO / "docker-compose.yml")]
    if Path("/dev/kvm").exists():
        # Proves the device reaches the convert service; the appliance still runs under TCG here.
        compose += ["-f", str(REPO / "deploy" / "docker-compose.kvm.yml")]
        env["V2V_KVM_GID"] = str(os.stat("/dev/kvm").st_gid)
    started = time.monotonic()
    run(*compose, "build", env=env, timeout=1800)
    built = time.monotonic()
    try:
        run(*compose, "up", "-d", "--wait", env=env, timeout=300)
        up = time.monotonic()
        print(f"\ndeploy: build {built - started:.0f} s, up {up - built:.0f} s")
        yield {"compose": compose, "env": env, "out": out, "run": run_dir, "tls": tls, "port": port}
    finally:
        logs = subprocess.run([*compose, "logs", "--no-color", "--tail", "40"], capture_output=True, text=True,
                              env=env, check=False)
        print(logs.stdout[-6000:])
        run(*compose, "down", "-v", "--timeout", "20", env=env, timeout=300)
        left = run("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}")
        volumes = run("docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}")
        assert left == volumes == "", f"left behind: containers {left!r}, volumes {volumes!r}"


def test_images_are_built_and_services_unprivileged(stack):
    env = stack["env"]
    for image, packages in (("v2v:latest", "nbdkit"), ("v2v-convert:latest", "libguestfs0")):
        inspect = json.loads(run("docker", "image", "inspect", image))[0]
        assert inspect["Config"]["User"] == "v2v"
        print(f"{image}: {inspect['Size'] / 1e6:.0f} MB")
        run("docker", "run", "--rm", "--network", "none", image, "dpkg-query", "-W", packages)
    ps = json.loads("[" + ",".join(run(*stack["compose"], "ps", "--format", "json", env=env).split()) + "]")
    assert {c["Service"]: c["Health"] for c in ps} == {s: "healthy" for s in
                                                      ("input", "convert", "output", "copier", "verify", "coordinator")}
    uids = run(*stack["compose"], "exec", "-T", "convert", "id", "-u", env=env)
    assert uids.strip() == str(SERVICE_UID)
    sock = stack["run"] / "coordinator.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600


def test_plaintext_client_is_refused_on_the_tcp_port(stack, real_guest):
    p = subprocess.run([V2V, "--coordinator", f"127.0.0.1:{stack['port']}", "--print-source", "-i", "disk",
                        real_guest], capture_output=True, text=True, timeout=120, check=False,
                       env={k: v for k, v in os.environ.items() if k != "V2V_TLS_DIR"})
    assert p.returncode == 1 and "coordinator service is not reachable" in p.stderr, p.stderr


def test_host_client_over_the_unix_socket(stack, real_guest):
    source = json.loads(run(V2V, "--coordinator", f"unix:{stack['run']}/coordinator.sock", "--print-source",
                            "--machine-readable", "-i", "disk", real_guest).splitlines()[-1])
    assert source["status"]["state"] == "GUEST_STATE_SUCCEEDED"


def test_real_guest_converted_through_the_containers_boots(stack, real_guest):
    before = sha256(real_guest)
    out = stack["out"]
    started = time.monotonic()
    events = run(V2V, "--coordinator", f"127.0.0.1:{stack['port']}", "--tls-dir", stack["tls"], "-i", "disk",
                 real_guest, "-o", "local", "-os", out, "-of", "qcow2", "--verify-boot=strict", "--machine-readable",
                 timeout=1800)
    print(f"\ndeploy: conversion and boot check through the containers {time.monotonic() - started:.0f} s")
    disk = out / "debian12-vmware-sda"
    assert disk.stat().st_uid == SERVICE_UID and (out / "debian12-vmware.xml").exists()
    # The boot is the verify container's (docs/verify.md): the converted disk, on an overlay, up to
    # the probe's report; strict, so with the NIC name the conversion kept and the fstab's mounts.
    steps = [json.loads(line)["step"] for line in events.splitlines() if line.startswith('{"step"')]
    booted = [s.get("message", "") for s in steps if s["step"] == "verify" and s["state"] == "STEP_STATE_NOTE"]
    assert len(booted) == 1 and "observed by probe" in booted[0], steps[-5:]
    assert "root /dev/vda3" in booted[0] and "failed units: none" in booted[0] and "nics ens192" in booted[0]
    assert sha256(real_guest) == before
