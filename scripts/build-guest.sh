#!/usr/bin/env bash
# Builds the guest (kernel, static agent, initramfs) and installs moat and the guest where
# the defaults look for them:
#   /usr/local/bin/moat, /usr/local/bin/containerd-shim-moat-v2 (containerd finds it on PATH),
#   /usr/local/bin/moat-vmm (the built-in VMM, found beside moat)
#   /usr/local/share/moat/vmlinux, /usr/local/share/moat/initramfs.cpio
# Idempotent: the kernel is cached by a hash of its inputs (guest-kernel/build.sh), cargo
# builds are incremental, and files are replaced only when their content changed.
set -euo pipefail
cd "$(dirname "$0")/.."
share=${MOAT_SHARE_DIR:-/usr/local/share/moat}
bindir=${MOAT_BIN_DIR:-/usr/local/bin}
mkdir -p "$share" "$bindir"

install_if_changed() { # src dst mode
  if ! cmp -s "$1" "$2"; then install -m "$3" "$1" "$2.new" && mv -f "$2.new" "$2"; fi
}

echo "build-guest: guest kernel" >&2
vmlinux=$(bash guest-kernel/build.sh | tail -n 1)
install_if_changed "$vmlinux" "$share/vmlinux" 0644
install_if_changed "$(dirname "$vmlinux")/.config" "$share/vmlinux.config" 0644

# On a host whose /dev/kvm is PVM-only (kvm_pvm, no vmx/svm), the built-in VMM's boot test
# needs the pvm kernel variant (guest-kernel/patches/pvm/, HOST-KVM.md). Its own source tree
# and cache key: the default kernel above is untouched.
if [[ -e /dev/kvm && -d /sys/module/kvm_pvm ]] && ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
  echo "build-guest: guest kernel, pvm variant (PVM-only KVM here)" >&2
  vmlinux_pvm=$(bash guest-kernel/build.sh --variant pvm | tail -n 1)
  install_if_changed "$vmlinux_pvm" "$share/vmlinux-pvm" 0644
fi

echo "build-guest: moat and the static agent" >&2
cargo build --quiet --release -p moat-agent --target x86_64-unknown-linux-musl
cargo build --quiet --release -p moat
install_if_changed target/release/moat "$bindir/moat" 0755
install_if_changed target/release/containerd-shim-moat-v2 "$bindir/containerd-shim-moat-v2" 0755
# The built-in VMM's process (docs/adr/0007): static, as Firecracker ships.
cargo build --quiet --release -p moat-vmm --target x86_64-unknown-linux-musl
install_if_changed target/x86_64-unknown-linux-musl/release/moat-vmm "$bindir/moat-vmm" 0755

target/release/moat initramfs --agent target/x86_64-unknown-linux-musl/release/moat-agent \
  --output target/initramfs.cpio >/dev/null
install_if_changed target/initramfs.cpio "$share/initramfs.cpio" 0644

echo "build-guest: installed $bindir/moat, $bindir/containerd-shim-moat-v2, $bindir/moat-vmm, $share/vmlinux ($(stat -c %s "$share/vmlinux") bytes), $share/initramfs.cpio ($(stat -c %s "$share/initramfs.cpio") bytes)" >&2
