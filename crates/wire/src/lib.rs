//! Sans-IO data-plane protocol cores.
