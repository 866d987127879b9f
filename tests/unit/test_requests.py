"""The request checks every service runs at its gRPC boundary (v2v/requests.py), and the bounds of a
source's hardware: finding 7 of the reliability probe, where NUL bytes and over-long names came back
as UNKNOWN "Exception calling application", names with newlines and unknown enum values were
accepted, and a VMX memsize out of range gave protobuf's "Value out of range"."""

from __future__ import annotations

import pytest

from v2v.errors import V2VError
from v2v.requests import check_request
from v2v.services.input.domainxml import parse_domain
from v2v.services.input.ovf import parse_ovf
from v2v.services.input.vmxfile import VmxError, parse_vmx
from v2v.v1 import convert_pb2, coordinator_pb2, input_pb2, output_pb2
from v2v.v1 import types_pb2 as pb

DISK = input_pb2.InputSpec(disk=input_pb2.DiskInput(paths=["/images/g.img"]))


@pytest.mark.parametrize(("request_", "field"), [
    (input_pb2.OpenRequest(workdir="g.1", guest="g\0", input=DISK), "guest: contains a NUL byte"),
    (input_pb2.OpenRequest(workdir="g.1", guest="g", input=input_pb2.InputSpec(
        disk=input_pb2.DiskInput(paths=["/ok", "/g.img\0/etc/passwd"]))), "input.disk.paths[1]: contains a NUL"),
    (input_pb2.OpenRequest(workdir="g.1", guest="g\nstep open: forged"), "guest 'g\\nstep open: forged': not"),
    (input_pb2.OpenRequest(workdir="g.1", guest="tab\there"), "guest 'tab\\there': not one printable line"),
    (input_pb2.OpenRequest(workdir="g.1", guest="n" * 256), "guest: 256 characters, at most 255"),
    (coordinator_pb2.SubmitRequest(job=coordinator_pb2.GuestJob(name="a\rb", input=DISK)), "job.name 'a\\rb'"),
    (coordinator_pb2.SubmitRequest(jobs=[coordinator_pb2.GuestJob(input=DISK),
                                         coordinator_pb2.GuestJob(output=output_pb2.OutputSpec(name="x\n"))]),
     "jobs[1].output.name"),
    (output_pb2.SetupRequest(workdir="g.1", output=output_pb2.OutputSpec(allocation=99)),  # type: ignore[arg-type]
     "output.allocation: 99 is not a v2v.v1.Allocation"),
    (convert_pb2.ConvertRequest(workdir="g.1", options=convert_pb2.ConvertOptions(accelerator=7)),  # type: ignore[arg-type]
     "options.accelerator: 7 is not a v2v.v1.Accelerator"),
    (input_pb2.OpenRequest(workdir="x" * 70_000), "workdir: 70000 characters, at most 65536"),
])
def test_a_hostile_field_is_named(request_, field):
    with pytest.raises(V2VError) as err:
        check_request(request_)
    assert err.value.code == pb.ERROR_CODE_BAD_INPUT
    assert field in err.value.message


def test_what_real_clients_send_passes():
    check_request(input_pb2.OpenRequest(workdir="web01.3fa9c2d1", guest="web01 (prod) – café", input=DISK))
    check_request(coordinator_pb2.SubmitRequest(job=coordinator_pb2.GuestJob(
        name="web01", input=DISK, output=output_pb2.OutputSpec(
            name="web01-kvm", allocation=output_pb2.ALLOCATION_PREALLOCATED,
            local=output_pb2.LocalOutput(directory="/srv/out")))))
    # A name read from a source is data, not a client's name: the input cleans it, not this check.
    check_request(output_pb2.CheckRequest(guest="g", source=pb.Source(name="display\tname")))


@pytest.mark.parametrize("vmx", ['memsize = "-4096"\n', 'memsize = "99999999999999"\n', 'numvcpus = "-2"\n',
                                 'numvcpus = "100000"\n'])
def test_vmx_hardware_out_of_range_is_a_line_naming_the_key(vmx):
    with pytest.raises(VmxError, match="numvcpus/memsize: .* out of range"):
        parse_vmx(vmx, "x")


def test_domain_xml_and_ovf_hardware_out_of_range():
    xml = b"<domain type='kvm'><name>g</name><memory unit='TiB'>100</memory><vcpu>2</vcpu></domain>"
    with pytest.raises(V2VError, match="g.xml: memory of 109951162777600 bytes is out of range"):
        parse_domain(xml, "g.xml")
    xml = b"<domain type='kvm'><name>g</name><memory unit='KiB'>1048576</memory><vcpu>0</vcpu></domain>"
    with pytest.raises(V2VError, match="0 vCPUs is out of range"):
        parse_domain(xml, "g.xml")
    ovf = b"""<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
 <References/><DiskSection/>
 <VirtualSystem ovf:id="g" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><Name>g</Name>
  <VirtualHardwareSection>
   <Item><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>-512</rasd:VirtualQuantity>
         <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits></Item>
  </VirtualHardwareSection></VirtualSystem></Envelope>"""
    with pytest.raises(V2VError, match="g.ovf: memory of -536870912 bytes is out of range"):
        parse_ovf(ovf, "g.ovf")
