"""Mutual TLS for the services' TCP listeners and the channels to them.

A TLS directory holds what `v2v certs DIR` writes (or the user's own files under the same names):

    ca.pem                      the CA both sides trust (and ca.key, only where certificates are made)
    server.pem, server.key      a listener's certificate (`v2v serve ... --tls-dir DIR`)
    client.pem, client.key      a caller's certificate (`v2v --coordinator HOST:PORT --tls-dir DIR`,
                                and a coordinator dialling phase services on other hosts)

Servers always require a client certificate signed by the CA: TLS without it would let anyone who
reaches the port submit guests. Unix sockets never use TLS: their file modes guard them.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

Role = Literal["server", "client"]
CA_FILE = "ca.pem"
TLS_DIR_ENV = "V2V_TLS_DIR"


@dataclass(frozen=True)
class TLSFiles:
    """The CA, certificate and key one side of a connection presents and checks with."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], role: Role) -> TLSFiles:
        d = Path(directory)
        files = cls(ca=d / CA_FILE, cert=d / f"{role}.pem", key=d / f"{role}.key")
        missing = [str(p) for p in (files.ca, files.cert, files.key) if not p.is_file()]
        if missing:
            raise V2VError(f"TLS directory {d}: missing {', '.join(missing)} (make them with: v2v certs {d})",
                           pb.ERROR_CODE_BAD_INPUT)
        return files

    @classmethod
    def from_env(cls, role: Role) -> TLSFiles | None:
        """From $V2V_TLS_DIR, the process-wide default; None when it is not set."""
        directory = os.environ.get(TLS_DIR_ENV)
        return cls.from_dir(directory, role) if directory else None

    def _read(self) -> tuple[bytes, bytes, bytes]:
        try:
            return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as exc:
            raise V2VError(f"cannot read TLS files: {exc}", pb.ERROR_CODE_BAD_INPUT) from None

    def server_credentials(self) -> grpc.ServerCredentials:
        ca, cert, key = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def add_tls_argument(parser: argparse.ArgumentParser, role: Role) -> None:
    parser.add_argument("--tls-dir", default=os.environ.get(TLS_DIR_ENV, ""), metavar="DIR",
                        help=f"mutual TLS on TCP addresses: {CA_FILE}, {role}.pem, {role}.key in DIR "
                             f"(made by `v2v certs DIR`; default ${TLS_DIR_ENV})")


def use_tls_dir(directory: str, role: Role) -> None:
    """Makes DIR this process's TLS default (what serve() and channel() take for TCP addresses),
    after checking that the files `role` needs are there; "" changes nothing."""
    if directory:
        TLSFiles.from_dir(directory, role)
        os.environ[TLS_DIR_ENV] = str(Path(directory).resolve())
