# syntax=docker/dockerfile:1
# Multi-stage build: the runtime image holds only the two binaries.
#
# The shim is built static (musl, scripts/build-shim.sh): the installer
# copies it out of this image onto the node, where the runtime execs it with
# whatever the node has, and a k3s node has no dynamic loader at all. The
# daemon only ever runs inside this image, so it stays linked against the
# image's glibc (its allocator and resolver are what it is benchmarked with);
# hence the distroless `cc` base rather than `static`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p tailnet-cnid \
 && scripts/build-shim.sh --locked \
 && install -D -m 0755 target/release/tailnet-cnid /out/tailnet-cnid \
 && install -D -m 0755 target/static/tailnet-cni /out/tailnet-cni

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="tailnet-cni" \
      org.opencontainers.image.description="One tailnet identity per Kubernetes pod" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/tailnet-cnid /usr/local/bin/tailnet-cnid
COPY --from=build /out/tailnet-cni /usr/local/bin/tailnet-cni
# The daemon creates TUN devices, veth pairs, routes and rules and enters pod
# network namespaces: it must run as root (the DaemonSet also sets privileged).
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/usr/local/bin/tailnet-cnid"]
CMD ["--config", "/etc/tailnet-cni/config.toml", "run"]
