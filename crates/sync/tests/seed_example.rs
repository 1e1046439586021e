//! The seed's sync snippet (`examples/sync.rs`) runs and converges.

use std::process::Command;

/// The example binary `cargo test` built next to this test's own binary
/// (`target/<profile>/examples/`), or `cargo run` when it is not there.
fn example(name: &str) -> Command {
    let built = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.join("examples").join(name)));
    match built.filter(|path| path.exists()) {
        Some(path) => Command::new(path),
        None => {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["run", "--quiet", "-p", "pluresdb-sync", "--example", name]).current_dir(env!("CARGO_MANIFEST_DIR"));
            cmd
        }
    }
}

#[test]
fn the_seed_sync_example_runs() {
    let out = example("sync").output().expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "example failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Sync active: true, Pending operations: 0"), "{stdout}");
    assert!(stdout.contains(r#"user:123 = {"name":"Alice"}"#), "{stdout}");
}
