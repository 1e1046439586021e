//! The crates that must run in browsers (core, sync, security, and the
//! link protocol a page speaks to peers) build for wasm32 with Debian's Rust 1.85, as DESIGN.md's
//! "Browser build" requires. Needs `apt-get install rustc-web cargo-web
//! rust-web-src lld` (`.ci/run` installs them); without them the test says
//! so and skips, except under CI, where it fails.

use std::path::Path;
use std::process::Command;

const PORTABLE_CRATES: &[&str] = &["pluresdb-core", "pluresdb-sync", "pluresdb-security", "pluresdb-link"];

#[test]
fn portable_crates_build_for_wasm32_with_rust_1_85() {
    let toolchain = Path::new("/usr/lib/rustlib/src/rust/library/Cargo.lock");
    if !toolchain.exists() || !Path::new("/usr/bin/wasm-ld").exists() {
        let message = "skipped: the wasm toolchain is missing (apt-get install rustc-web cargo-web rust-web-src lld)";
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("{message}");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("/usr/bin/cargo");
    cmd.current_dir(root)
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-C linker=wasm-ld")
        .env("CARGO_TARGET_DIR", root.join("target").join("wasm32-check"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["build", "--target", "wasm32-unknown-unknown", "-Zbuild-std=std,panic_abort"]);
    for krate in PORTABLE_CRATES {
        cmd.args(["-p", krate]);
    }
    let out = cmd.output().expect("run Debian's cargo");
    assert!(out.status.success(), "wasm32 build failed:\n{}", String::from_utf8_lossy(&out.stderr));
}
