//! A short, seeded run of every fuzz target: its seeds (real encoded
//! messages) as they are, then mutations of them, each checked for the
//! target's properties and for the allocation bound. Deterministic: the
//! same inputs on every run. `PLURESDB_FUZZ_INPUTS` sets the number of
//! mutated inputs per target (default 3,000, a few seconds in all); the
//! long runs are libFuzzer's (`fuzz/README.md`).

use pluresdb_fuzz_targets::mutate::Mutator;
use pluresdb_fuzz_targets::{target, CountingAllocator};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn inputs_per_target() -> usize {
    std::env::var("PLURESDB_FUZZ_INPUTS").ok().and_then(|n| n.parse().ok()).unwrap_or(3_000)
}

fn short_run(name: &str) {
    let target = target(name);
    let seeds = (target.seeds)();
    assert!(!seeds.is_empty(), "{name} has no seeds");
    for seed in &seeds {
        (target.check)(seed);
    }
    // The seed of the mutator follows from the target's name, so each
    // target sees its own inputs and every run sees the same ones.
    let mut mutator = Mutator::new(name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)));
    for n in 0..inputs_per_target() {
        let input = mutator.input(&seeds);
        let outcome = std::panic::catch_unwind(|| (target.check)(&input));
        if let Err(panic) = outcome {
            let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("{name}: input {n} failed: {}\ninput: {input:02x?}", message.unwrap_or_default());
        }
    }
}

macro_rules! short_runs {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                short_run(stringify!($name));
            }
        )*

        #[test]
        fn every_target_has_a_short_run() {
            let covered = [$(stringify!($name)),*];
            for t in pluresdb_fuzz_targets::TARGETS {
                assert!(covered.contains(&t.name), "{} has no short run", t.name);
            }
        }
    };
}

short_runs!(
    cbor_value,
    operation,
    node_record,
    sync_message,
    frame_codec,
    network_message,
    hello_nonce,
    ticket,
    security_keys,
    import_line,
    announcement,
    browser_header,
    config_file,
);
