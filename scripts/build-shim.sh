#!/usr/bin/env bash
# Builds the CNI shim as a static executable and puts it at one well-known
# path, <cargo target dir>/static/tailnet-cni (target/static/tailnet-cni by
# default), which the Dockerfile, the installer docs and the tests use.
#
# Why static: the container runtime execs the shim on the node, outside any
# image. A k3s node (the rancher/k3s image k3d runs) has no dynamic loader,
# Alpine has musl's, older distributions an older glibc: a dynamically linked
# shim fails there with "no such file or directory", and because it sits in
# the shared conflist, so does every pod on the node.
#
# The shim is built for the host architecture's musl target (added with
# rustup when missing) with the `shim` profile. Where no musl target can be
# had, it falls back to glibc with `+crt-static`, and says so. Either way the
# build fails if the result asks for a program interpreter.
#
# Usage: scripts/build-shim.sh [extra cargo build flags, e.g. --locked]
# Env:   SHIM_TARGET   Rust target triple to build for (default: musl, host arch)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
PROFILE=shim

say() { echo "build-shim: $*" >&2; }

musl_triple() {
  case "$(uname -m)" in
    x86_64) echo x86_64-unknown-linux-musl ;;
    aarch64 | arm64) echo aarch64-unknown-linux-musl ;;
    armv7l) echo armv7-unknown-linux-musleabihf ;;
    *) return 1 ;;
  esac
}

target_installed() {
  [[ -d "$(rustc --print sysroot)/lib/rustlib/$1/lib" ]]
}

# Installs the Rust standard library for $1 if it is missing; idempotent.
ensure_target() {
  target_installed "$1" && return 0
  command -v rustup >/dev/null || return 1
  say "adding the Rust target $1"
  rustup target add "$1" >&2 && target_installed "$1"
}

# Prints the little-endian unsigned integer of $3 bytes at offset $2 of $1.
read_uint() { od -An -t "u$3" -j "$2" -N "$3" --endian=little "$1" | tr -d ' '; }

# Prints the `p_type` of every ELF program header of $1, one per line.
program_header_types() {
  local file=$1 magic class phoff phentsize phnum i
  magic=$(od -An -t x1 -N 4 "$file" | tr -d ' \n')
  [[ $magic == 7f454c46 ]] || { say "$file is not an ELF file"; return 1; }
  [[ $(read_uint "$file" 5 1) == 1 ]] || { say "$file is not little-endian"; return 1; }
  class=$(read_uint "$file" 4 1)
  case "$class" in
    2) phoff=$(read_uint "$file" 32 8) phentsize=$(read_uint "$file" 54 2) phnum=$(read_uint "$file" 56 2) ;;
    1) phoff=$(read_uint "$file" 28 4) phentsize=$(read_uint "$file" 42 2) phnum=$(read_uint "$file" 44 2) ;;
    *) say "$file has an unknown ELF class $class"; return 1 ;;
  esac
  for ((i = 0; i < phnum; i++)); do
    read_uint "$file" $((phoff + i * phentsize)) 4
  done
}

# Fails unless $1 runs without a dynamic loader (no PT_INTERP header).
require_static() {
  local types
  types=$(program_header_types "$1") || return 1
  # PT_INTERP is 3.
  if grep -qx 3 <<<"$types"; then
    say "$1 asks for a program interpreter (dynamic loader): it would not run on a node without one"
    return 1
  fi
}

if [[ -n ${SHIM_TARGET:-} ]]; then
  target=$SHIM_TARGET
  ensure_target "$target" || { say "the Rust target $target is not installed and cannot be added"; exit 1; }
elif target=$(musl_triple) && ensure_target "$target"; then
  :
else
  # Naming the target keeps the flag off build scripts and proc macros.
  target="$(uname -m)-unknown-linux-gnu"
  say "no musl target for $(uname -m): falling back to $target with -C target-feature=+crt-static (static glibc)"
  export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static"
fi

target_dir=$("$CARGO" metadata --no-deps --format-version 1 | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
built="$target_dir/$target/$PROFILE/tailnet-cni"
out="$target_dir/static/tailnet-cni"

say "cargo build --profile $PROFILE --target $target -p tailnet-cni"
"$CARGO" build --profile "$PROFILE" --target "$target" -p tailnet-cni "$@"
require_static "$built"
install -D -m 0755 "$built" "$out"
say "static shim: $out ($(stat -c %s "$out") bytes, $target)"
