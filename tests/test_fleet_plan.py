"""Plans: YAML guests become the same GuestJobs the command line builds for the same options
(one parser), with defaults, priorities and limits; mistakes name the guest and the option."""

from __future__ import annotations

import pytest

from v2v.cli.args import build_job, conversion_parser
from v2v.cli.plan import parse_plan, plan_limits
from v2v.errors import V2VError

PLAN = """
limits: {conversions: 3, copy_streams: 6, per_source_host: 2, memory: 8G, appliance_memory: 1G}
defaults:
  output: {type: local, storage: /out, format: qcow2}
  convert: {accel: tcg}
  networks: ["VM Network:default"]
guests:
  - name: web1
    priority: 10
    input: {files: [/img/web1.img], format: raw}
  - input: {type: ova, files: /img/db.ova, options: {ova-checksums: false}}
    output: {type: json, storage: /json, options: ["json-disks-pattern=%{GuestName}-%{DiskNo}"], overwrite: true}
    copy: {parallel: 1, verify: true, while_converting: true}
    bridges: ["br0"]
"""


def cli_job(*argv: str):
    return build_job(conversion_parser().parse_intermixed_args(list(argv)))


def test_plan_means_what_the_same_flags_mean():
    plan = parse_plan(PLAN)
    web1 = cli_job("-i", "disk", "-if", "raw", "/img/web1.img", "-o", "local", "-os", "/out", "-of", "qcow2",
                   "--accel", "tcg", "-n", "VM Network:default")
    web1.name, web1.priority = "web1", 10
    db = cli_job("-i", "ova", "-io", "ova-checksums=off", "/img/db.ova", "-o", "json", "-os", "/json", "-of", "qcow2",
                 "-oo", "json-disks-pattern=%{GuestName}-%{DiskNo}", "--overwrite", "--accel", "tcg",
                 "--parallel", "1", "--verify", "--copy-while-converting", "-n", "VM Network:default", "-b", "br0")
    assert plan.jobs == [web1, db]


def test_plan_limits():
    fleet, capacity = plan_limits(parse_plan(PLAN).limits)
    assert (fleet.per_source_host, fleet.appliance_memory) == (2, 1 << 30)
    assert capacity == {"conversions": 3, "copy_streams": 6, "memory": 8 << 30}


@pytest.mark.parametrize("text, message", [
    ("guests: []", "non-empty `guests:`"),
    ("guests: [{input: {files: [/a]}, outptu: {}}]", "guest 1: unknown key(s) outptu"),
    ("guests: [{name: a, input: {files: [/a], fromat: raw}}]", "guest a: input.fromat: unknown option"),
    ("guests: [{name: a, input: {type: floppy, files: [/a]}}]", "guest a: argument -i: invalid choice: 'floppy'"),
    ("guests: [{name: a, input: {files: [/a]}, output: {type: local}}]", "guest a: -o local: give the output"),
    ("guests: [{name: a, input: {files: [/a]}, copy: {verify: 3}}]", "guest a: copy.verify: expected true or false"),
    ("defaults: {output: {type: 'null'}}\nguests: [{input: {files: [/x/a.img]}}, {input: {files: [/y/a.img]}}]",
     "guest 2: the name a is already another guest's"),
    ("limits: {cpus: 3}\nguests: [{input: {files: [/a]}}]", "limits: known keys"),
    ("guests: [{input: {files: [/a]}}", "not valid YAML"),
])
def test_plan_mistakes_name_the_guest_and_option(text, message):
    with pytest.raises(V2VError) as exc:
        parse_plan(text)
    assert message in exc.value.message
