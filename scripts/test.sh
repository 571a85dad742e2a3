#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need, builds the
# guest, then runs every tier. As root on Debian 12. Idempotent; a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n=== %s\n' "$*" >&2; }

step "host packages and toolchain"
# The build folders need several GB (a cold run: about 5); say so up front when the disk is
# short rather than failing later inside rustc.
avail_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if (( avail_kb < 6 * 1024 * 1024 )); then
  echo "warning: only $((avail_kb / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}'); a cold run needs about 6 GiB" >&2
fi
bash scripts/setup-host.sh

step "guest kernel, agent, initramfs"
bash scripts/build-guest.sh

step "format and lints"
cargo fmt --all --check
cargo clippy --quiet --workspace --all-targets -- -D warnings

step "unit tier (no root, no VM)"
cargo test --quiet --workspace

step "fuzz targets (15 s each)"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "the fuzz step needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz)" >&2
  exit 1
fi
for target in $(cd fuzz && cargo +nightly fuzz list); do
  log=$(mktemp)
  if ! (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time=15) >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed (reproducer under fuzz/artifacts/$target)" >&2
    exit 1
  fi
  echo "fuzz $target: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log")" >&2
  rm -f "$log"
done

step "host-integration binaries: the agent's host mode, the static in-container checker"
cargo build --quiet -p moat-agent
cargo build --quiet -p moat-tests --bin moat-checker --release --target x86_64-unknown-linux-musl

step "host-integration and VM tiers (root, QEMU)"
# Tests named hw_kvm_* need hardware KVM (docs/adr/0006): on other hosts they are not run,
# and this says so.
skip=()
if ! { grep -qwE 'vmx|svm' /proc/cpuinfo && [[ -d /sys/module/kvm_intel || -d /sys/module/kvm_amd ]]; }; then
  echo "not run on this host: tests named hw_kvm_* (they need hardware KVM: kvm_intel/kvm_amd with vmx/svm)" >&2
  skip=(--skip hw_kvm_)
fi
cargo test --quiet --no-fail-fast -p moat-tests -- --ignored --test-threads=1 --nocapture "${skip[@]}"
