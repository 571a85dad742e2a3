//! Support for moat's integration tiers (see `tests/README.md`).
//!
//! Tests in this crate that need root, QEMU or the built guest are marked `#[ignore]` with
//! the reason, so that `cargo test --workspace` (the unit tier) passes anywhere;
//! `scripts/test.sh` runs them with `--ignored` after installing and building what they
//! need. When what they need is missing they fail and say what to run.

use std::path::PathBuf;

use moat::paths::GuestPaths;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The guest's paths, failing the test with what to run if they are missing.
pub fn guest_paths() -> GuestPaths {
    let p = GuestPaths::from_env();
    for f in [&p.kernel, &p.initramfs] {
        assert!(
            f.is_file(),
            "{} is missing: run scripts/build-guest.sh (or set MOAT_KERNEL/MOAT_INITRAMFS)",
            f.display()
        );
    }
    p
}

/// The VMM moat picks on this host by default (`backend = "auto"`): the built-in VMM on
/// hardware KVM, QEMU with TCG elsewhere.
pub fn vmm() -> moat::config::Vmm {
    moat::config::Backend::Auto
        .choose(moat::host::detect_kvm())
        .expect("the automatic backend choice never fails")
        .vmm
}

pub mod bundle;
pub mod cli;
pub mod host;
