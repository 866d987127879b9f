"""The command line's input arguments (-i, -ic, -if, -it, -io, -ip, the files) as the typed
InputSpec. Each input plugin maps them itself (its InputCli): this module only finds the plugin
that `-i NAME` and the other arguments mean, and knows no plugin by name."""

from __future__ import annotations

from v2v.errors import V2VError
from v2v.plugins import InputArgs, InputCli
from v2v.services.input.base import INPUTS
from v2v.v1 import input_pb2
from v2v.v1 import types_pb2 as pb


def input_clis() -> dict[str, list[tuple[str, InputCli]]]:
    """-i NAME -> (kind, InputCli) of each plugin it reaches, the plain input first, then its variants."""
    groups: dict[str, list[tuple[str, InputCli]]] = {}
    for kind, plugin in INPUTS.plugins().items():
        if plugin.cli:
            groups.setdefault(plugin.cli.name, []).append((kind, plugin.cli))
    for group in groups.values():
        group.sort(key=lambda kind_cli: kind_cli[1].picks is not None)
    return dict(sorted(groups.items()))


def _bad(message: str) -> V2VError:
    return V2VError(message, pb.ERROR_CODE_BAD_INPUT, step="open")


def pick(a: InputArgs) -> tuple[str, InputCli]:
    """The plugin the arguments mean: the variant of -i NAME they pick (by -it, -ic, -io), else the plain one."""
    groups = input_clis()
    if a.kind not in groups:
        raise _bad(f"argument -i: invalid choice: {a.kind!r} (choose from {', '.join(groups)})")
    group = groups[a.kind]
    transports = [t for _, cli in group for t in cli.transports]
    if a.transport and transports and a.transport not in transports:
        raise _bad(f"-it {a.transport}: -i {a.kind} knows {', '.join(transports)}")
    picked = [(kind, cli) for kind, cli in group if cli.picks and cli.picks(a)]
    if len(picked) > 1:
        raise _bad(f"-i {a.kind}: these arguments mean several inputs at once ({', '.join(k for k, _ in picked)})")
    plain = [(kind, cli) for kind, cli in group if cli.picks is None]
    if not picked and not plain:
        raise _bad(f"-i {a.kind}: these arguments mean none of its inputs ({', '.join(k for k, _ in group)})")
    return (picked or plain)[0]


def input_spec(a: InputArgs) -> input_pb2.InputSpec:
    if not a.files:
        raise _bad(f"-i {a.kind}: no input given")
    kind, cli = pick(a)
    spec = input_pb2.InputSpec()
    a.io.owner = f"-i {a.kind}"
    INPUTS.fill(spec, kind, cli.build(a))
    a.io.done()
    return spec


def io_help(name: str) -> str:
    """`-io ?`: the options -i NAME takes, each plugin's own."""
    group = input_clis().get(name, [])
    lines = [f"-i {name} takes these -io options:"]
    lines += [f"  {key:<30} {meaning}" for _, cli in group for key, meaning in cli.io]
    return "\n".join(lines) if len(lines) > 1 else f"-i {name} takes no -io option"


def files_help() -> str:
    """What the positional arguments are, for each -i NAME."""
    return "; ".join(f"-i {name}: " + ", or ".join(cli.files for _, cli in group if cli.files)
                     for name, group in input_clis().items())
