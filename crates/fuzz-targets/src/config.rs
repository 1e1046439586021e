//! The node's config file (`pluresdb.toml`): the binary's own
//! `src/config_file.rs`, compiled here as it is there, and the checks the
//! binary applies to the values it reads (addresses, origins, host names).

#[path = "../../../src/config_file.rs"]
mod config_file;

use crate::alloc::within_bound;
use config_file::FileConfig;

/// A config file's text: what parses writes back (as TOML) to text that
/// parses to the same settings, and its values go through the binary's
/// checks without a panic.
pub fn check_file(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else { return };
    let Ok(file) = within_bound("FileConfig::parse", input, || FileConfig::parse(text)) else { return };
    let written = toml::to_string(&file).expect("settings that were read can be written");
    assert_eq!(FileConfig::parse(&written).ok().as_ref(), Some(&file), "settings written back read differently:\n{written}");
    within_bound("config values", input, || {
        let _ = file.api_addr.as_deref().map(|a| a.trim().parse::<std::net::SocketAddr>());
        for origin in file.allowed_origins.iter().flatten() {
            let _ = pluresdb_server::Origin::parse(origin);
        }
        for host in file.api_hosts.iter().flatten() {
            let _ = pluresdb_server::ApiHost::parse(host);
        }
    });
}

/// Seeds for [`check_file`]: the example in `src/config.rs`'s docs and a
/// few odd but valid files.
pub fn file_seeds() -> Vec<Vec<u8>> {
    [
        concat!(
            "api_addr = \"127.0.0.1:34570\"\nrequire_token = false\nresolver = \"last-writer-wins\"\nlog = \"warn\"\n",
            "watch_buffer = 4096\nbootstrap = [\"10.0.0.5:34569\"]\nmdns = true\nmdns_interfaces = [\"eth0\"]\n",
            "allowed_origins = [\"http://localhost:3000\"]\napi_hosts = [\"db.example.com\"]\n"
        ),
        "# nothing but a comment\n",
        "bootstrap = [ \"a:1\", 'b:2', \"\"\"c:3\"\"\" ]\nlog = 'info,pluresdb=debug'\n",
        "api_hosts = [\"[::1]:8080\", \"example.com\"]\nwatch_buffer = 0x10\n",
    ]
    .iter()
    .map(|text| text.as_bytes().to_vec())
    .collect()
}
