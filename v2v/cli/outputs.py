"""The command line's output arguments (-o, -os, -oc, -oo) as the typed OutputSpec. Each output
plugin maps them itself (its OutputCli); this module finds it by -o NAME and sets what every
output shares."""

from __future__ import annotations

import os

from v2v.errors import V2VError
from v2v.options import Options
from v2v.plugins import OutputArgs, OutputCli
from v2v.services.output.base import OUTPUTS
from v2v.v1 import output_pb2
from v2v.v1 import types_pb2 as pb

# -oo options every output takes (OutputSpec's own fields)
COMMON_OO = [("compressed", "qcow2 with compressed clusters (-of qcow2)")]


def output_clis() -> dict[str, tuple[str, OutputCli]]:
    """-o NAME (and each alias) -> (kind, OutputCli) of the plugin it reaches."""
    found = {name: (kind, plugin.cli) for kind, plugin in OUTPUTS.plugins().items() if plugin.cli
             for name in plugin.cli.names}
    return dict(sorted(found.items()))


def output_spec(kind: str, storage: str | None, uri: str, raw_oo: list[str], **common: object) -> output_pb2.OutputSpec:
    """`kind`: -o NAME; `storage` is made absolute when the output's -os is a directory on this machine."""
    clis = output_clis()
    if kind not in clis:
        raise V2VError(f"argument -o: invalid choice: {kind!r} (choose from {', '.join(clis)})",
                       pb.ERROR_CODE_BAD_INPUT, step="check")
    plugin_kind, cli = clis[kind]
    if storage and cli.directory:
        storage = os.path.abspath(storage)
    spec = output_pb2.OutputSpec(**common)  # type: ignore[arg-type]
    oo = Options("-oo", f"-o {kind}", raw_oo)
    spec.compressed = oo.flag("compressed")
    OUTPUTS.fill(spec, plugin_kind, cli.build(OutputArgs(kind, storage or "", uri, oo)))
    oo.done()
    return spec


def oo_help(name: str) -> str:
    """`-oo ?`: the options -o NAME takes, its plugin's own and the common ones."""
    own = list(output_clis()[name][1].oo) if name in output_clis() else []
    lines = [f"-o {name} takes these -oo options:"]
    lines += [f"  {key:<30} {meaning}" for key, meaning in [*own, *COMMON_OO]]
    return "\n".join(lines)


def directory_outputs() -> list[str]:
    """The -o NAMEs whose -os is a directory (the others: a pool name, or nothing)."""
    return [name for name, (_, cli) in output_clis().items() if cli.directory]
