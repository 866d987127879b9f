"""nbdkit curl's cookie-script for VMware datastores (-i vmx -it https, -i libvirt -ic vpx://|esx://):
logs in to the host once and prints the vmware_soap_session cookie it answers with, which nbdkit
then sends with its reads. nbdkit runs it at its first read and again once cookie-script-renew
seconds have passed, so a copy outlives the vSphere session (30 minutes idle by default).

A module that nbdkit runs as `PYTHON -m v2v.services.input.vmware_cookie` (the input service's own
interpreter, which has v2v installed, in the containers too), not a shell script written to the
work directory: it logs in with the input's own code (vmware_https.Session), and it reads the
password itself from the -ip file the input already checked, so the password is in no process's
arguments or environment (virt-v2v's script hands it to `curl -u`) and in no file v2v writes.

A failed login prints one line, naming the disk, to stderr and exits 1: nbdkit logs it as
"cookie-script failed: LINE" and fails the read."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from v2v.errors import V2VError
from v2v.services.input.vmware_https import DsFile, Server


def login(server: Server, f: DsFile) -> str:
    """A new session's cookie ("vmware_soap_session=..."): a HEAD of `f` with basic auth, as
    virt-v2v's script logs in."""
    session = server.session()
    status, _, _ = session.request("HEAD", f)
    if status != 200:
        raise V2VError(f"{server.url(f)}: the login was answered HTTP {status}")
    if not session.cookie:
        raise V2VError(f"{server.url(f)}: the login got no session cookie")
    return session.cookie


def forget_error_file() -> None:
    """nbdkit sends the script's stderr to a /tmp/errorsXXXXXX of its own, which it reads after a
    failure and never removes (1.32, and still in its sources since): one file a login. After a
    success it holds nothing to read, so the script removes it."""
    try:
        stderr = os.readlink("/proc/self/fd/2")
    except OSError:
        return
    if re.fullmatch(r"/tmp/errors[A-Za-z0-9]{6}", stderr):
        Path(stderr).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--user", required=True)
    p.add_argument("--password-file", required=True, help="the -ip file (the password is never an argument)")
    p.add_argument("--datacenter", required=True)
    p.add_argument("--datastore", required=True)
    p.add_argument("--path", required=True, help="the file on the datastore to log in with (the disk's extent)")
    p.add_argument("--insecure", action="store_true", help="accept any certificate")
    p.add_argument("--what", required=True, help="the disk, for the error")
    p.add_argument("--iteration", type=int, default=0, help="how many times nbdkit ran this before")
    a = p.parse_args(argv)
    server = Server(host=a.host, port=a.port or None, user=a.user, datacenter=a.datacenter,
                    password_file=a.password_file, verify=not a.insecure)
    try:
        print(login(server, DsFile(a.datastore, a.path)))
    except V2VError as err:
        # nbdkit keeps only the first line of the script's stderr
        doing = f"cannot renew the datastore session of {a.what} (renewal {a.iteration})" if a.iteration \
            else f"cannot log in to the datastore for {a.what}"
        print(f"{doing}: {err.message}", file=sys.stderr)
        return 1
    forget_error_file()
    return 0


if __name__ == "__main__":
    sys.exit(main())
