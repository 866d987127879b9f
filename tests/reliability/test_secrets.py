"""Matrix item 7, for the input that logs in with a password (-i vmx -it https -ip FILE, from the
command line and from a fleet plan): the password never appears in any process's arguments while
v2v runs, in its output or events, in the fleet's state database, or in any file of its work
directory, on success and on a failure that keeps the directory's logs."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import V2V
from tests.test_input_https import VMX, datastore  # noqa: F401  (a fixture: the HTTPS datastore stand-in)


def every_argv() -> str:
    return subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout


@contextmanager
def watching_argv() -> Iterator[list[str]]:
    """Every process's arguments, sampled every 50 ms while the block runs (one string a sample)."""
    seen: list[str] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            seen.append(every_argv())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        done.set()
        sampler.join()


def run_watching_argv(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Runs `cmd`, sampling every process's arguments meanwhile."""
    with watching_argv() as seen:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False), seen


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_socket() and secret.encode() in p.read_bytes()]


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_the_datastore_password_is_nowhere(datastore, workroot, tmp_path, outcome):  # noqa: F811
    password = datastore.password_file.read_text().strip()
    cmd = [str(V2V), "-i", "vmx", "-it", "https", datastore.url(VMX), "-ip", str(datastore.password_file),
           "-io", "sslverify=false", "--machine-readable"]
    # A failure after open (a missing output directory) keeps the work directory with its logs.
    cmd += ["--print-source"] if outcome == "success" else ["-o", "local", "-os", str(tmp_path / "missing")]
    env = {**os.environ, "V2V_WORKDIR_ROOT": str(workroot)}
    result, argvs = run_watching_argv(cmd, env)
    assert (result.returncode == 0) == (outcome == "success"), result.stderr
    assert argvs and not any(password in argv for argv in argvs)
    assert password not in result.stdout and password not in result.stderr
    if outcome == "failure":
        assert list(workroot.rglob("logs")), "the failed run kept no work directory to look into"
    assert files_holding(workroot, password) == []


def test_a_fleet_plans_password_is_nowhere(datastore, workroot, tmp_path):  # noqa: F811
    """The same input through `v2v fleet`: a plan names the password file; the password is in no
    process's arguments, not in the output or events, the state database or the guest's kept logs
    (the guest fails after open: its output directory is missing)."""
    password = datastore.password_file.read_text().strip()
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"guests": [{
        "name": "secret01",
        "input": {"type": "vmx", "transport": "https", "files": [datastore.url(VMX)],
                  "password_file": str(datastore.password_file), "options": ["sslverify=false"]},
        "output": {"type": "local", "storage": str(tmp_path / "missing")}}]}))
    state = workroot / "coordinator.db"
    env = {**os.environ, "V2V_WORKDIR_ROOT": str(workroot)}
    result, argvs = run_watching_argv([str(V2V), "fleet", str(plan), "--state", str(state), "--machine-readable"],
                                      env)
    assert result.returncode == 1 and "secret01" in result.stdout, result.stdout[-2000:] + result.stderr
    assert argvs and not any(password in argv for argv in argvs)
    assert password not in result.stdout and password not in result.stderr
    assert state.exists() and password.encode() not in state.read_bytes()
    assert list(workroot.rglob("logs")), "the failed guest kept no work directory to look into"
    assert files_holding(workroot, password) == []


URI_PASSWORD = "uri-secret-5b0e"


@pytest.mark.parametrize(("args", "error"), [
    (["-i", "vmx", "-it", "https", f"https://root:{URI_PASSWORD}@127.0.0.1:1/folder/x/x.vmx?dcPath=a&dsName=b"],
     "guest x: step open: -it https: the URL carries a password"),
    (["-i", "vmx", "-it", "ssh", f"ssh://root:{URI_PASSWORD}@127.0.0.1:1/x/x.vmx"],
     "guest x: step open: -i vmx: the ssh:// URI carries a password"),
    (["-i", "libvirt", "-ic", f"vpx://root:{URI_PASSWORD}@127.0.0.1/dc/host?no_verify=1", "web01"],
     "guest web01: step open: -ic vpx://...: the URI carries a password"),
    (["-i", "libvirt", "-ic", f"esx://root:{URI_PASSWORD}@127.0.0.1/?no_verify=1", "web01"],
     "guest web01: step open: -ic esx://...: the URI carries a password"),
    (["-i", "libvirt", "-ic", f"xen+ssh://root:{URI_PASSWORD}@127.0.0.1/", "web01"],
     "guest web01: step open: -ic xen+ssh://...: the URI carries a password"),
], ids=["https", "ssh", "vpx", "esx", "xen"])
def test_a_password_in_a_uri_is_refused_and_repeated_nowhere(workroot, args, error):
    """The user typed it into v2v's own arguments; it goes no further: the refusal says where the
    password belongs without quoting the URI, and no file of the run holds it."""
    env = {**os.environ, "V2V_WORKDIR_ROOT": str(workroot)}
    result = subprocess.run([str(V2V), *args, "-o", "null"], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert result.returncode == 1
    assert f"v2v: error: {error}: put it in a file and pass that (-ip FILE)" in result.stderr, result.stderr
    assert URI_PASSWORD not in result.stdout and URI_PASSWORD not in result.stderr
    assert files_holding(workroot, URI_PASSWORD) == []
