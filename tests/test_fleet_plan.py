"""Plans: YAML guests become the same GuestJobs the command line builds for the same options
(one parser), with defaults, priorities and limits; mistakes name the guest and the option."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

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


def test_a_bare_guest_means_the_bare_command_line():
    """The plan's defaults are the flags' defaults: one definition of each option."""
    assert parse_plan("guests: [{input: {files: /a.img}, output: {storage: /out}}]").jobs == \
        [cli_job("/a.img", "-os", "/out")]


def test_plan_input_keys_reach_the_plugin_the_same_flags_reach():
    plan = parse_plan("""
guests:
  - input: {type: vmx, transport: https, password_file: /pw, options: {sslverify: false},
            files: "https://root@esx1/folder/db/db.vmx?dcPath=ha-datacenter&dsName=ds1"}
    output: {type: qemu, storage: /out, options: [qemu-boot]}
    convert: {block_driver: virtio-scsi, keys: [/dev/sda2:file:/keys/db.key, all:clevis]}
""")
    assert plan.jobs == [cli_job("-i", "vmx", "-it", "https", "-ip", "/pw", "-io", "sslverify=false",
                                 "https://root@esx1/folder/db/db.vmx?dcPath=ha-datacenter&dsName=ds1",
                                 "-o", "qemu", "-os", "/out", "-oo", "qemu-boot", "--block-driver", "virtio-scsi",
                                 "--key", "/dev/sda2:file:/keys/db.key", "--key", "all:clevis")]
    assert plan.jobs[0].input.WhichOneof("kind") == "vmware_https"


def test_a_guest_may_be_a_guest_job_in_protobuf_json():
    web1 = cli_job("-i", "disk", "/img/web1.img", "-o", "local", "-os", "/out", "--verify")
    web1.name = "web1"
    db = cli_job("-i", "ova", "/img/db.ova", "-o", "null")
    plan = parse_plan(yaml.safe_dump({
        "defaults": {"output": {"type": "json", "storage": "/elsewhere"}},  # a job is whole: not applied to it
        "guests": [{"job": json_format.MessageToDict(web1)},
                   {"name": "db", "priority": 7, "job": json_format.MessageToDict(db)}],
    }))
    db.name, db.priority = "db", 7
    assert plan.jobs == [web1, db]


@pytest.mark.parametrize("text, message", [
    ("guests: [{name: web, job: {input: {dsk: {paths: [/a]}}}}]",
     'guest web: job: Failed to parse input field: Message type "v2v.v1.InputSpec" has no field named "dsk" at '
     '"GuestJob.input".'),
    ("guests: [{job: {name: web, input: {disk: {paths: [/a]}}, output: {nul: {}}}}]",
     'guest web: job: Failed to parse output field: Message type "v2v.v1.OutputSpec" has no field named "nul"'),
    ("guests: [{name: web, job: {input: {disk: {}}}, output: {type: local}}]",
     "guest web: job: a GuestJob stands alone, with only name and priority beside it (found output)"),
    ("guests: [{name: web, job: [disk]}]", "guest web: job: expected a GuestJob in protobuf JSON form"),
    ("guests: [{name: web, input: {files: [/a]}, convert: {acel: kvm}}]", "guest web: convert.acel: unknown option"),
    ("guests: [{name: web, input: {files: [/a]}, convert: {accel: fast}}]",
     "guest web: convert.accel: expected one of auto, kvm, tcg, not 'fast'"),
    ("guests: [{name: web, input: {files: [/a]}, output: {type: 'null', format: vmdk}}]",
     "guest web: output.format: expected one of raw, qcow2, not 'vmdk'"),
    ("guests: [{name: web, input: {files: [/a]}, copy: {parallel: many}}]",
     "guest web: copy.parallel: expected a whole number, not 'many'"),
    ("guests: [{name: web, input: {files: [/a], uri: [a, b]}}]", "guest web: input.uri: expected one value"),
    ("guests: [{name: web, input: {files: [/a], options: {ova-checksums: false}}, output: {type: 'null'}}]",
     "guest web: -i disk: unknown -io option(s): ova-checksums"),
])
def test_bad_keys_name_the_guest_and_the_key(text, message):
    with pytest.raises(V2VError) as exc:
        parse_plan(text)
    assert message in exc.value.message


def test_the_plans_of_docs_fleet_md_parse():
    doc = (Path(__file__).parents[1] / "docs" / "fleet.md").read_text()
    plans = [block.split("```")[0] for block in doc.split("```yaml\n")[1:]]
    assert len(plans) >= 2
    jobs = [job for text in plans for job in parse_plan(text, "docs/fleet.md").jobs]
    assert {"web1", "db", "web2", "foo1"} <= {job.name for job in jobs}


def test_verify_boot_key() -> None:
    """verify_boot is a guest's top-level key, as --verify-boot[=strict] on the command line."""
    from v2v.v1 import verify_pb2

    text = ("defaults:\n  verify_boot: basic\n  output: {type: 'null'}\n"
            "guests:\n  - name: a\n    input: {files: [a.img]}\n"
            "  - name: b\n    verify_boot: strict\n    input: {files: [b.img]}\n")
    with pytest.raises(V2VError, match="verify_boot: expected one of .*basic.*strict.*not 'always'"):
        parse_plan(text + "  - name: c\n    verify_boot: always\n    input: {files: [c.img]}\n")
    jobs = parse_plan(text).jobs
    assert [j.verify_boot for j in jobs] == [verify_pb2.VERIFY_MODE_BASIC, verify_pb2.VERIFY_MODE_STRICT]
