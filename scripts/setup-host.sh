#!/usr/bin/env bash
# Installs what moat's builds and tests need on a Debian 12 host, idempotently.
# Re-running it is a no-op (a few seconds) once everything is present.
set -euo pipefail

need_pkgs=(
  qemu-system-x86      # the qemu backend (TCG here, KVM on hardware hosts)
  linux-source-6.12    # the guest kernel source
  busybox-static       # test rootfs
  build-essential bc flex bison libelf-dev libssl-dev xz-utils  # kernel build
  libseccomp-dev libcap-ng-dev pkg-config  # to build virtiofsd
  runc                 # the peer in benchmarks
  containerd containernetworking-plugins iproute2  # the ecosystem tier (tests/tests/containerd.rs); brings ctr
  protobuf-compiler    # builds the CRI client of that tier (k8s-cri's generated protos)
)

missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl; then
  echo "setup-host: adding the musl target"
  rustup target add x86_64-unknown-linux-musl
fi

export PATH="$HOME/.cargo/bin:$PATH"
# The fuzz step of scripts/test.sh: a nightly toolchain and cargo-fuzz.
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "setup-host: installing the nightly toolchain (for cargo fuzz)"
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "setup-host: installing cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz
fi

# The peer of the vsock benchmark (tests/tests/vsock_bench.rs): rust-vmm's vhost-device-vsock.
if ! command -v vhost-device-vsock >/dev/null 2>&1; then
  echo "setup-host: building vhost-device-vsock (benchmark peer; cargo install, a few minutes once)"
  cargo install --quiet --locked vhost-device-vsock
fi

# virtiofsd serves each sandbox's rootfs share. Built from crates.io, cached in ~/.cargo/bin.
if ! command -v virtiofsd >/dev/null 2>&1; then
  echo "setup-host: building virtiofsd (cargo install, a few minutes once)"
  cargo install --quiet --locked virtiofsd
fi
