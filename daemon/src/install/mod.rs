//! Installs the shim and chains it into the primary CNI conflist.
