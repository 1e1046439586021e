//! Convergence under faults, over many seeds. `PLURESDB_SIM_SEEDS=N` runs
//! N seeds (default 200) and `PLURESDB_SIM_FIRST_SEED=S` starts at S, so a
//! failure replays with one seed and a soak runs as many as wanted:
//! `PLURESDB_SIM_SEEDS=100000 cargo test --release -p pluresdb-sync --test simulator`.
//!
//! Half the seeds sign their operations (hash chains, commit signatures,
//! verification on receipt) with a fast stand-in scheme, so the chain, the
//! batches cut at signed operations and the held-back tails are exercised
//! under every fault; a few seeds use the nodes' real Ed25519 keys.

use pluresdb_core::signing::stand_in::{NamedSigner, NamedVerifier};
use pluresdb_core::OpSigner;
use pluresdb_security::{Identity, OpSignatureVerifier};
use pluresdb_sync::sim::{run, SimConfig, SimKeys};
use std::sync::Arc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn keyed_keys() -> SimKeys {
    SimKeys {
        identity: Arc::new(|i| {
            let name = format!("signer-{i}");
            (name.clone(), Arc::new(NamedSigner(name)) as Arc<dyn OpSigner>)
        }),
        verifier: Arc::new(NamedVerifier),
    }
}

fn ed25519_keys() -> SimKeys {
    SimKeys {
        identity: Arc::new(|i| {
            let identity = Identity::from_seed([i as u8 + 1; 32]);
            (identity.peer_id().to_string(), Arc::new(identity) as Arc<dyn OpSigner>)
        }),
        verifier: Arc::new(OpSignatureVerifier),
    }
}

fn run_seeds(first: u64, seeds: u64, keys: impl Fn(u64) -> Option<SimKeys>) -> (u64, u64, u64) {
    let (mut written, mut dropped, mut slowest) = (0, 0, 0);
    for seed in first..first + seeds {
        let config = SimConfig { seed, full_mesh: seed % 4 == 0, keys: keys(seed), ..SimConfig::default() };
        match run(&config) {
            Ok(report) => {
                written += report.ops_written;
                dropped += report.messages_dropped;
                slowest = slowest.max(report.convergence_ms);
            }
            Err(err) => {
                panic!("{err}\nreplay: PLURESDB_SIM_FIRST_SEED={seed} PLURESDB_SIM_SEEDS=1 cargo test -p pluresdb-sync --test simulator")
            }
        }
    }
    (written, dropped, slowest)
}

#[test]
fn replicas_converge_after_loss_duplication_reordering_and_partitions() {
    let seeds = env("PLURESDB_SIM_SEEDS", 200);
    let first = env("PLURESDB_SIM_FIRST_SEED", 0);
    let (written, dropped, slowest) = run_seeds(first, seeds, |seed| (seed % 2 == 0).then(keyed_keys));
    eprintln!("{seeds} seeds: {written} operations written, {dropped} messages dropped, slowest convergence {slowest} ms after the heal");
}

#[test]
fn replicas_with_real_keys_converge() {
    let (written, _, slowest) = run_seeds(10_000, 4, |_| Some(ed25519_keys()));
    eprintln!("4 Ed25519 seeds: {written} signed operations, slowest convergence {slowest} ms after the heal");
}
