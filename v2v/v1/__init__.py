"""Generated protobuf and gRPC code of the v2v.v1 API (make protos)."""
