//! The checks behind PluresDB's fuzz targets: one per decoder of untrusted
//! bytes. Each [`Target`] decodes an input, checks properties of what it
//! got (a value that decodes re-encodes to itself; the decoders that read
//! the same format agree) and that no single allocation exceeds what the
//! input's length justifies ([`alloc::allocation_bound`]). A property that
//! fails panics, which libFuzzer and the test harness both report.
//!
//! The same functions run in two places: the libFuzzer targets in `fuzz/`
//! (long, coverage-guided runs, see `fuzz/README.md`) and a short seeded
//! run in `cargo test` (`tests/short_run.rs`), from seed inputs that are
//! real encoded messages ([`Target::seeds`]).
//!
//! ```
//! # use pluresdb_fuzz_targets::TARGETS;
//! // Every target's seeds pass its check (the test binary must install
//! // `CountingAllocator` as its global allocator for the bound to be
//! // measured; doc tests use the `sync_message` decoder only by name).
//! assert!(TARGETS.iter().any(|t| t.name == "sync_message"));
//! ```

pub mod alloc;
mod browser;
mod cbor;
mod config;
mod discovery;
mod import;
pub mod mutate;
mod net;
mod security;
mod sync;

pub use alloc::CountingAllocator;

/// One decoder under test.
pub struct Target {
    /// The name of the fuzz target (`fuzz/fuzz_targets/<name>.rs`).
    pub name: &'static str,
    /// Decodes `input` and checks the properties; panics on a violation.
    pub check: fn(&[u8]),
    /// Real encoded inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target, in the order the short runs go through them.
pub const TARGETS: &[Target] = &[
    Target { name: "cbor_value", check: cbor::check_value, seeds: cbor::value_seeds },
    Target { name: "operation", check: cbor::check_operation, seeds: cbor::operation_seeds },
    Target { name: "node_record", check: cbor::check_node_record, seeds: cbor::node_record_seeds },
    Target { name: "sync_message", check: sync::check_message, seeds: sync::message_seeds },
    Target { name: "frame_codec", check: net::check_frames, seeds: net::frame_seeds },
    Target { name: "network_message", check: net::check_message, seeds: net::message_seeds },
    Target { name: "hello_nonce", check: net::check_hello_nonce, seeds: net::hello_nonce_seeds },
    Target { name: "ticket", check: security::check_ticket, seeds: security::ticket_seeds },
    Target { name: "security_keys", check: security::check_keys, seeds: security::key_seeds },
    Target { name: "import_line", check: import::check_line, seeds: import::line_seeds },
    Target { name: "announcement", check: discovery::check_announcement, seeds: discovery::announcement_seeds },
    Target { name: "browser_header", check: browser::check_header, seeds: browser::header_seeds },
    Target { name: "config_file", check: config::check_file, seeds: config::file_seeds },
];

/// The target named `name`. Panics if there is none (a fuzz target whose
/// name is not in [`TARGETS`] is a typo).
pub fn target(name: &str) -> &'static Target {
    TARGETS.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no fuzz target named {name}"))
}
