//! Announces a node on mDNS and prints what discovery finds, for a given
//! number of seconds (default 10), then withdraws. For trying discovery
//! between machines or network namespaces:
//!
//! ```text
//! cargo run -p pluresdb-discovery --example discovery -- [seconds] [port] [network tag]
//! ```
//!
//! Each run is a new peer id; runs with the same network tag (default
//! `0000000000000000`) list each other with `same_network: true`.

use pluresdb_discovery::{CombinedDiscovery, DiscoveryConfig, LocalPeer};
use pluresdb_security::Identity;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())).init();
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let port: u16 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(pluresdb_net::DEFAULT_PORT);
    let tag = args.next().unwrap_or_else(|| "0000000000000000".to_owned());
    let peer_id = Identity::generate()?.peer_id().to_string();
    println!("this node: {peer_id} on port {port}, network {tag}");

    let discovery = CombinedDiscovery::new(DiscoveryConfig::default()).with_local(LocalPeer::new(peer_id, port, tag));
    discovery.start_discovery().await?;
    discovery.announce_peer().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let changed = discovery.changed();
        for peer in discovery.discover_peers().await? {
            println!("  {} at {} {:?} same_network={}", peer.id, peer.addresses.join(","), peer.methods, peer.same_network);
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            break;
        }
        println!("changed:");
    }
    discovery.stop().await;
    Ok(())
}
