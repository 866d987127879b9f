#!/usr/bin/env python3
"""Turns v2v's -o json description into a virt-install command that imports the guest.

usage: target-to-virt-install.py GUEST.json   (prints the command; pipe it to sh to run it)"""
import json
import shlex
import sys

doc = json.load(open(sys.argv[1]))
if doc.get("format") != "v2v-target" or doc.get("version") != 1:
    sys.exit(f"{sys.argv[1]}: not a v2v target description, version 1")
t = doc["target"]
bus = {"BLOCK_BUS_VIRTIO_SCSI": "scsi", "BLOCK_BUS_SATA": "sata", "BLOCK_BUS_IDE": "ide"}
model = {"NIC_MODEL_E1000": "e1000", "NIC_MODEL_RTL8139": "rtl8139"}
cmd = ["virt-install", "--import", "--noautoconsole", "--name", t["name"],
       "--memory", str(int(t["source"]["memory"]) // 2**20), "--vcpus", str(t["source"].get("vcpus", 1)),
       "--osinfo", "detect=on,require=off"]
if t.get("caps", {}).get("machine") == "MACHINE_Q35":
    cmd += ["--machine", "q35"]
if t.get("firmware") == "FIRMWARE_UEFI":
    cmd += ["--boot", "uefi"]
for d in t.get("disks", []):
    cmd += ["--disk", f"path={d['path']},format={d['format']},bus={bus.get(d.get('bus'), 'virtio')}"]
for n in t.get("nics", []):
    kind = "bridge" if n.get("network_type") == "NETWORK_TYPE_BRIDGE" else "network"
    mac = f",mac={n['mac']}" if n.get("mac") else ""
    cmd += ["--network", f"{kind}={n.get('network', 'default')},model={model.get(n.get('model'), 'virtio')}{mac}"]
print(shlex.join(cmd))
