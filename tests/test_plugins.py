"""A plugin is one file (issue 14 point 6): a throw-away `-i foo`, written into the v2v_plugins
namespace package in a directory put on sys.path, with no proto edit and no list touched, is found
by the command line (its choices, --help, `-io ?`), by the coordinator's scheduler (its source
host) and pipeline (its location), and the Input service's Open reaches it and serves its disk. An
output, `-o bar`, is one file the same way."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nbd
import pytest

from v2v.cli.args import build_job, conversion_parser
from v2v.cli.outputs import oo_help, output_spec
from v2v.coordinator.clients import ServiceAddresses
from v2v.coordinator.scheduler import Limits, Scheduler, Worker
from v2v.errors import V2VError
from v2v.services.input.base import INPUTS
from v2v.services.input.locations import input_location, source_host
from v2v.services.input.service import InputService
from v2v.services.output.base import OUTPUTS
from v2v.services.output.null import NullOutput
from v2v.v1 import input_pb2, output_pb2
from v2v.workdir import WorkDir

FOO = textwrap.dedent('''
    """-i foo: one raw file, said to live on the host -io foo-host= names."""

    from contextlib import ExitStack
    from pathlib import Path

    from v2v.plugins import InputArgs, InputCli
    from v2v.services.input.base import INPUTS, InputPlugin, absolute
    from v2v.services.input.diskfile import probe, serve_all
    from v2v.v1 import input_pb2, output_pb2
    from v2v.v1 import types_pb2 as pb
    from v2v.workdir import WorkDir


    def _from_cli(a: InputArgs) -> input_pb2.PluginInput:
        return input_pb2.PluginInput(options={"path": absolute(a.one()), "host": a.io.value("foo-host")})


    @INPUTS.register("foo")
    class FooInput(InputPlugin[input_pb2.PluginInput]):
        cli = InputCli("foo", _from_cli, files="one raw file (foo's)",
                       io=[("foo-host=HOST", "the host the file is read from")])

        def location(self, options: input_pb2.PluginInput) -> str:
            return options.options["path"]

        def source_host(self, options: input_pb2.PluginInput) -> str:
            return options.options["host"] or "localhost"

        def open(self, options: input_pb2.PluginInput, guest: str, workdir: WorkDir, stack: ExitStack) -> pb.Source:
            disk = probe(Path(options.options["path"]), "raw")
            source = pb.Source(name="foo-guest", vcpus=1, disks=[disk])
            serve_all(source.disks, workdir, stack)
            return source
''')


BAR = textwrap.dedent('''
    """-o bar: -o null with an option of its own, -oo bar-note=, carried in the generic message."""

    from v2v.plugins import OutputArgs, OutputCli
    from v2v.services.output.base import OUTPUTS
    from v2v.services.output.null import NullOutput
    from v2v.v1 import output_pb2


    def _from_cli(a: OutputArgs) -> output_pb2.PluginOutput:
        return output_pb2.PluginOutput(options={"note": a.oo.value("bar-note")})


    @OUTPUTS.register("bar")
    class BarOutput(NullOutput):
        cli = OutputCli(["bar"], _from_cli, oo=[("bar-note=TEXT", "a note for bar")])
''')


@pytest.fixture
def one_file_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The one file of -i foo (and of -o bar), on sys.path for this test only; yields the directory
    they are under."""
    for registry in (INPUTS, OUTPUTS):  # the registrations are undone after
        monkeypatch.setattr(registry, "_plugins", dict(registry.plugins()))
    plugins = tmp_path / "plugins"
    for role, text in (("input", FOO), ("output", BAR)):
        (plugins / "v2v_plugins" / role).mkdir(parents=True)
        (plugins / "v2v_plugins" / role / f"{'foo' if role == 'input' else 'bar'}.py").write_text(text)
    monkeypatch.syspath_prepend(str(plugins))
    importlib.invalidate_caches()
    yield plugins
    for name in [m for m in sys.modules if m == "v2v_plugins" or m.startswith("v2v_plugins.")]:
        del sys.modules[name]


@pytest.fixture
def raw_disk(tmp_path: Path) -> Path:
    disk = tmp_path / "foo.raw"
    disk.write_bytes(b"foo!" * 256 + bytes(1 << 20))
    return disk


def foo_spec(disk: Path, *io: str) -> input_pb2.InputSpec:
    args = ["-i", "foo", str(disk), "-o", "null", *[x for o in io for x in ("-io", o)]]
    return build_job(conversion_parser().parse_intermixed_args(args)).input


def test_the_cli_offers_it_and_its_help(one_file_plugins: Path, raw_disk: Path) -> None:
    parser = conversion_parser()
    assert "foo" in next(a for a in parser._actions if a.dest == "input").choices
    assert "-i foo: one raw file (foo's)" in " ".join(parser.format_help().split())
    # A fresh process finds it from sys.path alone, and -io ? lists its options
    v2v = Path(sys.executable).parent / "v2v"
    res = subprocess.run([v2v, "-i", "foo", "-io", "?", str(raw_disk)], capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(one_file_plugins)}, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "-i foo takes these -io options:"
    assert "foo-host=HOST" in res.stdout and "the host the file is read from" in res.stdout


def test_its_options_travel_in_the_generic_message(one_file_plugins: Path, raw_disk: Path) -> None:
    spec = foo_spec(raw_disk, "foo-host=store1.lab")
    assert spec.WhichOneof("kind") == "plugin"
    assert spec.plugin == input_pb2.PluginInput(name="foo", options={"path": str(raw_disk), "host": "store1.lab"})
    with pytest.raises(V2VError, match=r"-i foo: unknown -io option\(s\): foo-colour"):
        foo_spec(raw_disk, "foo-colour=red")


def test_the_coordinator_gets_its_location_and_source_host(one_file_plugins: Path, raw_disk: Path) -> None:
    spec = foo_spec(raw_disk, "foo-host=store1.lab")
    assert input_location(spec) == str(raw_disk)
    assert source_host(spec) == "store1.lab"
    # the per-source-host limit holds a second guest of foo's host, not one of another host
    addresses = ServiceAddresses("unix:i", "unix:c", "unix:o", "unix:p")
    s = Scheduler([Worker("w", addresses, conversions=8)], Limits(per_source_host=1))
    first = s.ticket("a", 0, source_host(spec))
    second = s.ticket("b", 0, source_host(foo_spec(raw_disk, "foo-host=store1.lab")))
    other = s.ticket("c", 0, source_host(foo_spec(raw_disk)))
    with s.admitted(first):
        with s.admitted(other):
            pass
        got = threading.Event()

        def admit_second() -> None:
            with s.admitted(second):
                got.set()

        th = threading.Thread(target=admit_second)
        th.start()
        time.sleep(0.2)
        assert not got.is_set()
    th.join(timeout=5)
    assert got.is_set()


def test_open_reaches_it(one_file_plugins: Path, raw_disk: Path, workroot: Path) -> None:
    svc = InputService()
    wd = WorkDir.create("foo", workroot)
    resp = svc.open(input_pb2.OpenRequest(workdir=wd.name, guest="foo", input=foo_spec(raw_disk)))
    try:
        assert resp.source.name == "foo-guest"
        assert [d.virtual_size for d in resp.source.disks] == [raw_disk.stat().st_size]
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={resp.sockets[0]}")
        assert h.pread(8, 0) == b"foo!foo!"
        h.shutdown()
    finally:
        svc.close(wd.name)


def test_an_output_is_one_file_too(one_file_plugins: Path) -> None:
    assert "bar" in next(a for a in conversion_parser()._actions if a.dest == "output").choices
    assert "bar-note=TEXT" in oo_help("bar") and "compressed" in oo_help("bar")
    spec = output_spec("bar", None, "", ["bar-note=hello"])
    assert spec.plugin == output_pb2.PluginOutput(name="bar", options={"note": "hello"})
    plugin, options = OUTPUTS.lookup(spec)
    assert isinstance(plugin, NullOutput) and type(plugin).__name__ == "BarOutput" and options == spec.plugin


def test_a_plugin_this_process_lacks_is_local_and_unnamed() -> None:
    """A coordinator whose remote Input service has a plugin it lacks still queues the guest."""
    spec = input_pb2.InputSpec(plugin=input_pb2.PluginInput(name="elsewhere", options={"path": "/x"}))
    assert (input_location(spec), source_host(spec)) == ("", "localhost")
    assert (input_location(input_pb2.InputSpec()), source_host(input_pb2.InputSpec())) == ("", "localhost")
