"""docker-compose.yml is valid and wires the services together (no engine needed: `config` only)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import pytest

from tests.conftest import REPO

PHASES = ("input", "convert", "output", "copier")
RUN_VOLUME = "v2v-run"
WORK_VOLUME = "v2v-work"


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "compose", "-f", str(REPO / "docker-compose.yml"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False)


@pytest.fixture(scope="module")
def compose_ready() -> None:
    """`docker compose` (v2), installed by the project's script when only the docker client is there."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client on this machine: cannot validate docker-compose.yml")
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0:
        subprocess.run([str(REPO / "deploy" / "install-compose.sh")], check=True, timeout=300)


@pytest.fixture(scope="module")
def config(compose_ready: None) -> dict:
    p = compose("config", "--format", "json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def volume_at(service: dict, source: str) -> str | None:
    """Where the named volume `source` is mounted in the service, if it is."""
    return next((v["target"] for v in service.get("volumes", [])
                 if v["type"] == "volume" and v["source"] == source), None)


def test_config_is_valid(compose_ready: None):
    p = compose("config", "-q")
    assert p.returncode == 0, p.stderr


def test_all_services_from_one_image(config: dict):
    services = config["services"]
    assert set(services) == {*PHASES, "coordinator"}
    assert {s["image"] for s in services.values()} == {"v2v:latest"}
    for name, s in services.items():
        cmd = s["command"]
        assert cmd[:3] == ["v2v", "serve", name] and cmd[3:5] == ["--listen", f"unix:/run/v2v/{name}.sock"], cmd


def test_work_volume_at_the_same_path_everywhere(config: dict):
    """NBD sockets made in one container's work directory are opened by path in another."""
    services = config["services"]
    paths = {name: volume_at(s, WORK_VOLUME) for name, s in services.items()}
    assert set(paths.values()) == {"/var/tmp/v2v"}, paths
    for name, s in services.items():
        assert s["environment"]["V2V_WORKDIR_ROOT"] == paths[name]


def test_coordinator_dials_sockets_on_the_shared_run_volume(config: dict):
    services = config["services"]
    coord = services["coordinator"]
    run_dir = volume_at(coord, RUN_VOLUME)
    assert run_dir
    args = coord["command"]
    for phase in PHASES:
        address = args[args.index(f"--{phase}") + 1]
        assert address.startswith(f"unix:{run_dir}/"), address
        # The phase service listens on that very socket, on the same volume.
        listen = services[phase]["command"][services[phase]["command"].index("--listen") + 1]
        assert address == listen and volume_at(services[phase], RUN_VOLUME) == run_dir
        assert coord["depends_on"][phase]["condition"] == "service_healthy"


def test_health_checks_probe_each_service_socket(config: dict):
    for name, s in config["services"].items():
        test = s["healthcheck"]["test"]
        assert test[0] == "CMD" and "grpc_health.v1" in test[3], shlex.join(test)
        assert test[-2] == f"unix:/run/v2v/{name}.sock"


def test_guest_data_only_where_needed(config: dict):
    def binds(name: str) -> dict[str, bool]:
        return {v["target"]: v.get("read_only", False) for v in config["services"][name]["volumes"]
                if v["type"] == "bind"}

    assert binds("input") == {"/guests": True}
    assert binds("output") == {"/out": False}
    assert binds("convert") == binds("copier") == binds("coordinator") == {}
    assert config["services"]["convert"]["environment"]["LIBGUESTFS_BACKEND_SETTINGS"] == "force_tcg"
