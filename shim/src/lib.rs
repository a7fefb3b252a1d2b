//! The `tailnet-cni` CNI plugin shim.
