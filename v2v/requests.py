"""What every request must be before a service acts on it, whatever its type: checked once, at the
gRPC boundary, so a hostile value is INVALID_ARGUMENT naming its field rather than an exception
deep inside ("Exception calling application", UNKNOWN) or, worse, accepted.

- No string holds a NUL byte: every path and name reaches a system call, which cuts it there.
- The names a client gives (a guest's, a target's, a domain's) are one printable line of at most
  255 characters: they go into file names, log lines and events, where a newline could forge a
  line. (Names read from a source, Source.name, are the input's to clean, not the client's.)
- Other strings are at most 64 KiB (a path, a URI, an XML document is bigger only in bytes fields).
- Every enum value is one the API defines: an unknown number is a client from another version, or
  a probe, and would otherwise fall through to a default branch."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from v2v.errors import V2VError
from v2v.v1 import types_pb2 as pb

NAME_FIELDS = frozenset({"guest", "target_name", "domain", "v2v.v1.GuestJob.name", "v2v.v1.OutputSpec.name",
                         "v2v.v1.StartRequest.name"})
MAX_NAME = 255
MAX_STRING = 64 * 1024


def _check_string(path: str, fd: FieldDescriptor, value: str) -> None:
    if "\0" in value:
        raise V2VError(f"{path}: contains a NUL byte", pb.ERROR_CODE_BAD_INPUT)
    if fd.name in NAME_FIELDS or fd.full_name in NAME_FIELDS:
        if len(value) > MAX_NAME:
            raise V2VError(f"{path}: {len(value)} characters, at most {MAX_NAME}", pb.ERROR_CODE_BAD_INPUT)
        if not value.isprintable():
            raise V2VError(f"{path} {value!r}: not one printable line", pb.ERROR_CODE_BAD_INPUT)
    elif len(value) > MAX_STRING:
        raise V2VError(f"{path}: {len(value)} characters, at most {MAX_STRING}", pb.ERROR_CODE_BAD_INPUT)


def _check_value(path: str, fd: FieldDescriptor, value: object) -> None:
    if fd.type == FieldDescriptor.TYPE_STRING:
        _check_string(path, fd, str(value))
    elif (fd.type == FieldDescriptor.TYPE_ENUM and fd.enum_type is not None  # an enum field always has its type
          and value not in fd.enum_type.values_by_number):
        raise V2VError(f"{path}: {value} is not a {fd.enum_type.full_name}", pb.ERROR_CODE_BAD_INPUT)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE and isinstance(value, Message):
        check_request(value, path)


def check_request(msg: Message, prefix: str = "") -> None:
    """Raises BAD_INPUT (INVALID_ARGUMENT on the wire) naming the first field that breaks a rule."""
    for fd, value in msg.ListFields():
        path = f"{prefix}.{fd.name}" if prefix else fd.name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            for key, item in value.items():
                _check_value(f"{path}[{key!r}]", fd.message_type.fields_by_name["value"], item)
        elif fd.is_repeated:
            for n, item in enumerate(value):
                _check_value(f"{path}[{n}]", fd, item)
        else:
            _check_value(path, fd, value)
