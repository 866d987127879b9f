"""v2v: convert guests from foreign hypervisors to KVM through four gRPC phase services."""
