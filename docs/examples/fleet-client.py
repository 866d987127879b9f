#!/usr/bin/env python3
"""Drive a coordinator from Python: submit a plan, print each guest as it ends.

    v2v serve coordinator --listen unix:/tmp/coord.sock --embedded 1 &
    .venv/bin/python docs/examples/fleet-client.py unix:/tmp/coord.sock plan.yaml
"""

import sys

from v2v.client import FleetClient, state_name

with FleetClient(sys.argv[1]) as fleet:
    ids = fleet.submit_plan(sys.argv[2])
    for status in fleet.wait(ids):
        where = f" in {status.error.step}: {status.error.message}" if status.error.message else ""
        print(f"{status.name}: {state_name(status.state)}{where}")
