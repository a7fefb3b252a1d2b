//! Tailscale control protocol client.
