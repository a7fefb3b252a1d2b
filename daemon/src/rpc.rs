//! The gRPC service the shim talks to.
