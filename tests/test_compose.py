"""The deployment files are valid and wire the services together, with no engine or cluster:
docker-compose.yml through `docker compose config`, deploy/k8s against the Kubernetes schemas."""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO
from v2v.coordinator.clients import ServiceAddresses
from v2v.coordinator.scheduler import Worker
from v2v.coordinator.servers import parse_worker

PHASES = ("input", "convert", "output", "copier")
RUN_VOLUME = "v2v-run"
WORK_VOLUME = "v2v-work"


# Fixed host paths, so the expectations do not depend on the caller's environment.
CONFIG_ENV = {"V2V_INPUT_DIR": "/srv/guests", "V2V_OUTPUT_DIR": "/srv/out"}


def compose(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("V2V_")} | CONFIG_ENV | (env_extra or {})
    return subprocess.run(["docker", "compose", "-f", str(REPO / "docker-compose.yml"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False, env=env)


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


def listens(service: dict) -> list[str]:
    cmd = service["command"]
    return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--listen"]


def test_two_images_each_service_on_its_socket(config: dict):
    services = config["services"]
    assert set(services) == {*PHASES, "verify", "coordinator"}
    assert {n: s["image"] for n, s in services.items()} == {**{n: "v2v:latest" for n in services},
                                                           "convert": "v2v-convert:latest",
                                                           "verify": "v2v-convert:latest"}
    # Each image is built by one service only: `up --build` builds it once.
    assert {n: s["build"]["target"] for n, s in services.items() if "build" in s} == {"input": "small",
                                                                                    "convert": "convert"}
    for name, s in services.items():
        assert s["command"][:3] == ["v2v", "serve", name]
        assert listens(s)[0] == f"unix:/run/v2v/{name}.sock"


def test_least_privilege(config: dict):
    for name, s in config["services"].items():
        assert "user" not in s, name  # the image's uid 10000
        assert s["cap_drop"] == ["ALL"] and "no-new-privileges:true" in s["security_opt"], name
        assert not s.get("privileged") and not s.get("devices"), name
        assert s["network_mode"] == ("host" if name == "coordinator" else "none"), name


def test_coordinator_on_tls_tcp_and_unix_sockets(config: dict):
    coord = config["services"]["coordinator"]
    cmd = coord["command"]
    assert listens(coord) == ["unix:/run/v2v/coordinator.sock", "unix:/run/v2v-host/coordinator.sock",
                              "127.0.0.1:50051"]
    tls_dir = cmd[cmd.index("--tls-dir") + 1]
    binds = {v["target"]: v for v in coord["volumes"] if v["type"] == "bind"}
    assert binds[tls_dir].get("read_only") is True
    assert "/run/v2v-host" in binds


def test_kvm_override_passes_the_device_to_convert_and_verify_only(compose_ready: None):
    """The two services that run qemu: the appliance (convert) and the boot check (verify)."""
    p = compose("-f", str(REPO / "deploy" / "docker-compose.kvm.yml"), "config", "--format", "json",
                env_extra={"V2V_KVM_GID": "994", "V2V_LIBGUESTFS_BACKEND_SETTINGS": ""})
    assert p.returncode == 0, p.stderr
    services = json.loads(p.stdout)["services"]
    for name in ("convert", "verify"):
        svc = services[name]
        assert [(d["source"], d["target"]) for d in svc["devices"]] == [("/dev/kvm", "/dev/kvm")], name
        assert svc["group_add"] == ["994"] and svc["environment"]["LIBGUESTFS_BACKEND_SETTINGS"] == "", name
    assert all(not s.get("devices") for n, s in services.items() if n not in ("convert", "verify"))


def test_worker_projects_each_on_their_own_ports_and_volumes(compose_ready: None):
    """deploy/docker-compose.worker.yml: the same four services, on TCP with mutual TLS at the
    project's ports; two projects share nothing (docs/deploy.md "Several workers")."""
    worker = str(REPO / "deploy" / "docker-compose.worker.yml")
    base = compose("config", "--format", "json")
    assert base.returncode == 0, base.stderr
    base_services = json.loads(base.stdout)["services"]
    projects = {}
    for project, prefix in (("w1", "5006"), ("w2", "5007")):
        p = subprocess.run(["docker", "compose", "-p", project, "-f", worker, "config", "--format", "json"],
                           capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
                           env={k: v for k, v in os.environ.items() if not k.startswith("V2V_")} | CONFIG_ENV
                           | {"V2V_PORT_PREFIX": prefix, "V2V_TLS_DIR": "/srv/tls"})
        assert p.returncode == 0, p.stderr
        projects[project] = json.loads(p.stdout)
    for project, prefix in (("w1", "5006"), ("w2", "5007")):
        services = projects[project]["services"]
        assert sorted(services) == sorted(PHASES)
        for n, (name, s) in enumerate(sorted(services.items(), key=lambda kv: PHASES.index(kv[0])), start=1):
            cmd = s["command"]
            listens = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--listen"]
            assert listens == [f"unix:/run/v2v/{name}.sock", f"127.0.0.1:{prefix}{n}"]
            tls_dir = cmd[cmd.index("--tls-dir") + 1]
            binds = {v["target"]: v for v in s["volumes"] if v["type"] == "bind"}
            assert binds[tls_dir]["source"] == "/srv/tls" and binds[tls_dir].get("read_only") is True
            assert s["network_mode"] == "host"
            # extended, not copied: the same image, privileges and health check as in docker-compose.yml
            for key in ("image", "cap_drop", "security_opt", "healthcheck"):
                assert s[key] == base_services[name][key], (name, key)
            assert volume_at(s, WORK_VOLUME) == s["environment"]["V2V_WORKDIR_ROOT"] == "/var/tmp/v2v"
        assert {v["name"] for v in projects[project]["volumes"].values()} == {
            f"{project}_{RUN_VOLUME}", f"{project}_{WORK_VOLUME}"}


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
        assert listens(services[phase]) == [address] and volume_at(services[phase], RUN_VOLUME) == run_dir
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

    # At their host paths: a client on the host names disks and output as it would without containers.
    assert binds("input") == {"/srv/guests": True}
    assert binds("output") == {"/srv/out": False}
    assert binds("convert") == binds("copier") == {}
    assert set(binds("coordinator")) == {"/run/v2v-host", "/etc/v2v/tls"}
    assert config["services"]["convert"]["environment"]["LIBGUESTFS_BACKEND_SETTINGS"] == "force_tcg"


# Kubernetes (deploy/k8s): no cluster runs here, so the manifests are checked against the API's JSON
# schemas (the kubernetes-validate package ships them: offline) and against each other.
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.30.0"


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict]:
    docs = [d for f in sorted(K8S.glob("*.yaml")) if f.name != "kustomization.yaml"
            for d in yaml.safe_load_all(f.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_k8s_manifests_match_the_api_schemas(manifests):
    assert set(manifests) == {("Service", "v2v-worker"), ("StatefulSet", "v2v-worker"), ("Service", "v2v-coordinator"),
                              ("Deployment", "v2v-coordinator"), ("PersistentVolumeClaim", "v2v-guests"),
                              ("PersistentVolumeClaim", "v2v-output")}
    for doc in manifests.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(f.name for f in K8S.glob("*.yaml")
                                                        if f.name != "kustomization.yaml")


def test_k8s_schema_check_catches_mistakes(manifests):
    broken = copy.deepcopy(manifests[("StatefulSet", "v2v-worker")])
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # a typo of volumeMounts
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_k8s_worker_pod_shares_one_work_dir(manifests):
    service, sts = manifests[("Service", "v2v-worker")], manifests[("StatefulSet", "v2v-worker")]
    assert service["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "v2v-worker"
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10000
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["work"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert list(containers) == list(PHASES)
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    for name, c in containers.items():
        assert {"name": "work", "mountPath": "/var/tmp/v2v"} in c["volumeMounts"]
        assert {"name": "V2V_WORKDIR_ROOT", "value": "/var/tmp/v2v"} in c["env"]
        cmd = c["command"]
        assert cmd[:3] == ["v2v", "serve", name] and "--tls-dir" in cmd
        assert f"0.0.0.0:{service_ports[name]}" in cmd and c["ports"][0]["containerPort"] == service_ports[name]
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert c["readinessProbe"]["exec"]["command"][-2] == f"unix:/run/v2v/{name}.sock"


def test_k8s_coordinator_reaches_every_worker_through_the_headless_service(manifests):
    sts, service = manifests[("StatefulSet", "v2v-worker")], manifests[("Service", "v2v-worker")]
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    cmd = manifests[("Deployment", "v2v-coordinator")]["spec"]["template"]["spec"]["containers"][0]["command"]
    defaults = Worker(name="", addresses=ServiceAddresses("", "", "", ""))
    workers = [parse_worker(arg.removeprefix("--worker="), defaults) for arg in cmd if arg.startswith("--worker=")]
    assert len(workers) == sts["spec"]["replicas"]
    for n, worker in enumerate(workers):
        for phase in PHASES:
            assert getattr(worker.addresses, phase) == f"v2v-worker-{n}.v2v-worker:{service_ports[phase]}"
    assert "--tls-dir=/etc/v2v/tls" in cmd
