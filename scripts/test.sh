#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need, builds the
# guest, then runs every tier. As root on Debian 12. Idempotent; a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n=== %s\n' "$*" >&2; }

step "host packages and toolchain"
bash scripts/setup-host.sh

step "guest kernel, agent, initramfs"
bash scripts/build-guest.sh

step "format and lints"
cargo fmt --all --check
cargo clippy --quiet --workspace --all-targets -- -D warnings

step "unit tier (no root, no VM)"
cargo test --quiet --workspace

step "host-integration and VM tiers (root, QEMU)"
cargo test --quiet -p moat-tests -- --ignored --test-threads=1 --nocapture
