//! The seed's encryption snippet (`examples/encryption.rs`) runs, and a
//! message makes the round trip.

#[test]
fn the_seed_encryption_example_runs() {
    // The binary `cargo test` built beside this test, else `cargo run`.
    let built = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.join("examples/encryption")));
    let out = match built.filter(|path| path.exists()) {
        Some(path) => std::process::Command::new(path).output(),
        None => std::process::Command::new(env!("CARGO"))
            .args(["run", "--quiet", "-p", "pluresdb-security", "--example", "encryption"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output(),
    }
    .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "example failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("peer1 received: Hello, secure world!"), "{stdout}");
    assert!(stdout.contains("decrypted from peer1: Hello, secure world!"), "{stdout}");
    assert!(stdout.contains("our signature valid at peer1: true"), "{stdout}");
    assert!(stdout.contains("peer1's signature valid: true, ours passed off as peer1's: false"), "{stdout}");
    assert!(stdout.contains("our peer id: 12D3KooW"), "{stdout}");
}
