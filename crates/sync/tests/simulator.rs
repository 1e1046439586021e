//! Convergence under faults, over many seeds. `PLURESDB_SIM_SEEDS=N` runs
//! N seeds (default 200) and `PLURESDB_SIM_FIRST_SEED=S` starts at S, so a
//! failure replays with one seed and a soak runs as many as wanted:
//! `PLURESDB_SIM_SEEDS=100000 cargo test --release -p pluresdb-sync --test simulator`.

use pluresdb_sync::sim::{run, SimConfig};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn replicas_converge_after_loss_duplication_reordering_and_partitions() {
    let seeds = env("PLURESDB_SIM_SEEDS", 200);
    let first = env("PLURESDB_SIM_FIRST_SEED", 0);
    let mut written = 0;
    let mut dropped = 0;
    let mut slowest = 0;
    for seed in first..first + seeds {
        let config = SimConfig { seed, full_mesh: seed % 4 == 0, ..SimConfig::default() };
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
    eprintln!("{seeds} seeds: {written} operations written, {dropped} messages dropped, slowest convergence {slowest} ms after the heal");
}
