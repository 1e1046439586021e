//! The seed's sync snippet (`examples/sync.rs`) runs and converges.

#[test]
fn the_seed_sync_example_runs() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["run", "--quiet", "-p", "pluresdb-sync", "--example", "sync"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "example failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Sync active: true, Pending operations: 0"), "{stdout}");
    assert!(stdout.contains(r#"user:123 = {"name":"Alice"}"#), "{stdout}");
}
