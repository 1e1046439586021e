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

/// The same faults with acknowledgements of small batches delayed (the
/// node's `ack_delay`, and a much longer one): every replica converges.
#[test]
fn replicas_converge_with_delayed_acknowledgements() {
    for seed in 20_000..20_000 + env("PLURESDB_SIM_SEEDS", 200) / 4 {
        let mut config = SimConfig { seed, full_mesh: seed % 4 == 0, ..SimConfig::default() };
        config.sync.ack_delay = match seed % 2 {
            0 => pluresdb_sync::NODE_ACK_DELAY,
            _ => std::time::Duration::from_millis(400),
        };
        if let Err(err) = run(&config) {
            panic!("{err}\nseed {seed}, ack_delay {:?}", config.sync.ack_delay);
        }
    }
}

#[test]
fn replicas_with_real_keys_converge() {
    let (written, _, slowest) = run_seeds(10_000, 4, |_| Some(ed25519_keys()));
    eprintln!("4 Ed25519 seeds: {written} signed operations, slowest convergence {slowest} ms after the heal");
}

/// A member stamps its writes at `u64::MAX` (replica 0) and another three
/// years ahead (replica 1), under loss, duplication, reordering and
/// partitions. Their operations reach every op log but take effect
/// nowhere, honest clocks stay within the drift bound (checked by the
/// simulator), and in every field they wrote that honest replicas also
/// wrote, every replica shows an honest value.
#[test]
fn writers_far_in_the_future_lock_no_one_out() {
    use pluresdb_core::Hlc;
    use pluresdb_sync::sim::{run_replicas, EPOCH_MS};
    const YEAR_MS: u64 = 365 * 24 * 3_600_000;
    let ahead = [Hlc::from_u64(u64::MAX - 3), Hlc::new(EPOCH_MS + 3 * YEAR_MS, 0)];
    let mut contested = 0;
    for seed in 0..16 {
        let config = SimConfig {
            seed,
            full_mesh: seed % 4 == 0,
            keys: (seed % 2 == 0).then(keyed_keys),
            clocks_ahead: vec![(0, ahead[0]), (1, ahead[1])],
            ..SimConfig::default()
        };
        let (report, engines) = run_replicas(&config).unwrap_or_else(|err| panic!("{err}"));
        let future: Vec<String> = engines[..2].iter().map(|e| e.peer_id().to_owned()).collect();
        let mut future_writes = Vec::new();
        for (origin, from) in future.iter().zip(ahead) {
            let ops = engines[0].database().ops_after(origin, 0, usize::MAX).unwrap();
            assert!(ops.iter().all(|op| op.timestamp > from), "seed {seed}: {origin} wrote before its clock");
            future_writes.extend(ops);
        }
        assert!(!future_writes.is_empty(), "seed {seed}: the future writers wrote nothing");
        for (i, engine) in engines.iter().enumerate() {
            let db = engine.database();
            // Every op log holds them, none is in effect.
            for origin in &future {
                assert_eq!(db.ops_after(origin, 0, usize::MAX).unwrap().len() as u64, db.version_vector().get(origin));
            }
            assert_eq!(db.deferred_count(), future_writes.len() as u64, "seed {seed}, replica {i}");
            assert_eq!(db.version_vector().total(), report.ops_written);
        }
        // In each field a future writer wrote and an honest replica wrote
        // too, every replica shows the same honest value.
        for op in &future_writes {
            let fields: Vec<&String> = op.data.as_object().map(|o| o.keys().collect()).unwrap_or_default();
            let shown: Vec<Option<pluresdb_core::Node>> = engines.iter().map(|e| e.database().get(&op.node_id).unwrap()).collect();
            assert!(shown.iter().all(|node| *node == shown[0]), "seed {seed}: replicas show {} differently", op.node_id);
            let Some(record) = engines[2].database().record(&op.node_id).unwrap() else { continue };
            for field in fields {
                let Some(values) = record.fields.get(field) else { continue };
                let winner = &values[values.len() - 1];
                assert!(!future.iter().any(|f| **f == *winner.stamp.id.origin), "seed {seed}: {}.{field} shows a future write", op.node_id);
                contested += 1;
            }
        }
    }
    assert!(contested > 100, "only {contested} contested fields: the test proves little");
    eprintln!("{contested} fields written by future writers show honest values on every replica");
}

/// Replicas that hold operations of more origins than a message names
/// exchange their vectors in ranges, round after round, under the same
/// loss, reordering and partitions, and converge.
#[test]
fn replicas_holding_thousands_of_origins_converge_in_ranges() {
    for seed in 20_000..20_004 {
        let config = SimConfig { seed, extra_origins: 1_500, writes: 300, full_mesh: seed % 2 == 0, ..SimConfig::default() };
        if let Err(err) = run(&config) {
            panic!("{err}");
        }
    }
}

/// Every replica's store fails a few commits the seed picks (a full disk
/// while writing the batch, an I/O error writing the commit record, or a
/// failed fsync after the batch was stored), then refuses every commit
/// until it is recovered, which fails a few times first (the cause lasting
/// a while). Under the usual network faults too: every acknowledged write
/// is on every replica, no operation is applied twice (each origin's log
/// holds each sequence number once, matching the version vector), a write
/// stored by a commit that reported an error is held once and synced, and
/// the replicas converge once the faults stop. `PLURESDB_SIM_STORE_SEEDS`
/// sets how many seeds (default 64).
#[test]
fn replicas_lose_no_acknowledged_write_and_apply_nothing_twice_through_store_faults() {
    use pluresdb_sync::sim::StoreFaults;
    let first = env("PLURESDB_SIM_FIRST_SEED", 50_000);
    let seeds = env("PLURESDB_SIM_STORE_SEEDS", 64);
    let mut totals = pluresdb_sync::sim::SimReport::default();
    for seed in first..first + seeds {
        let config = SimConfig {
            seed,
            full_mesh: seed % 4 == 0,
            keys: (seed % 2 == 0).then(keyed_keys),
            writes: 600,
            store_faults: Some(StoreFaults { per_replica: 3, within_commits: 300, max_failed_recoveries: 4 }),
            ..SimConfig::default()
        };
        let report = run(&config).unwrap_or_else(|err| {
            panic!("{err}\nreplay: PLURESDB_SIM_FIRST_SEED={seed} PLURESDB_SIM_STORE_SEEDS=1 cargo test -p pluresdb-sync --test simulator store_faults")
        });
        totals.ops_written += report.ops_written;
        totals.store_faults += report.store_faults;
        totals.store_recoveries += report.store_recoveries;
        totals.writes_refused += report.writes_refused;
        totals.ops_not_stored += report.ops_not_stored;
        totals.unacknowledged_stored += report.unacknowledged_stored;
        totals.convergence_ms = totals.convergence_ms.max(report.convergence_ms);
    }
    // The faults happened, in every kind the test claims to cover.
    assert!(totals.store_faults >= seeds * 5, "only {} store faults in {seeds} seeds", totals.store_faults);
    // Every store recovered by the end (the simulator checks each); a
    // fault met by the probe commit of a recovery is one episode with it.
    assert!(totals.store_recoveries * 2 >= totals.store_faults, "{totals:?}");
    assert!(totals.writes_refused > 0 && totals.ops_not_stored > 0 && totals.unacknowledged_stored > 0, "{totals:?}");
    eprintln!(
        "{seeds} seeds: {} writes acknowledged, {} store faults, {} recoveries, {} writes refused while degraded, {} peer operations \
         not stored and asked for again, {} writes stored by a commit that reported an error; slowest convergence {} ms after the heal",
        totals.ops_written,
        totals.store_faults,
        totals.store_recoveries,
        totals.writes_refused,
        totals.ops_not_stored,
        totals.unacknowledged_stored,
        totals.convergence_ms
    );
}
