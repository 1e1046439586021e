//! Writes every fuzz target's seed inputs (real encoded messages) into
//! `<dir>/<target>/seed-<n>`, the corpus layout of cargo fuzz:
//!
//! ```text
//! cargo run -p pluresdb-fuzz-targets --example write_seeds -- fuzz/corpus
//! ```

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".to_owned()));
    for target in pluresdb_fuzz_targets::TARGETS {
        let target_dir = dir.join(target.name);
        std::fs::create_dir_all(&target_dir)?;
        let seeds = (target.seeds)();
        for (n, seed) in seeds.iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{n}")), seed)?;
        }
        println!("{}: {} seeds in {}", target.name, seeds.len(), target_dir.display());
    }
    Ok(())
}
