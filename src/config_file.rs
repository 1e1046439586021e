//! The config file's format (`pluresdb.toml`): what it may hold, read from
//! its text. A module of its own that uses nothing else of the binary, so
//! that the fuzz target of the config decoder (`crates/fuzz-targets`)
//! compiles this same file.

use serde::{Deserialize, Serialize};

/// What the file may hold. Unknown keys are refused, so a typo is not
/// silently ignored. Values are checked where they are used (`config`).
#[derive(Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub api_addr: Option<String>,
    pub require_token: Option<bool>,
    pub resolver: Option<String>,
    pub log: Option<String>,
    pub watch_buffer: Option<usize>,
    pub store_cache_mib: Option<usize>,
    pub max_clock_drift: Option<String>,
    pub bootstrap: Option<Vec<String>>,
    pub mdns: Option<bool>,
    pub mdns_interfaces: Option<Vec<String>>,
    pub quic: Option<bool>,
    pub libp2p: Option<bool>,
    pub libp2p_listen: Option<Vec<String>>,
    pub dht: Option<bool>,
    pub relay: Option<bool>,
    pub allowed_origins: Option<Vec<String>>,
    pub api_hosts: Option<Vec<String>>,
    pub browser_listen: Option<String>,
    pub webrtc: Option<bool>,
    pub webrtc_listen: Option<String>,
}

impl FileConfig {
    /// Reads the text of a config file.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}
