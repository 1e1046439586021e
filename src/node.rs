//! `pluresdb serve`: the node runtime. Today it serves the HTTP API over the
//! replica; the network engines and discovery join it with their issues.

use crate::replica::Replica;
use anyhow::{bail, Context};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub fn serve(db: Replica, data_dir: &Path, api_addr: SocketAddr, json: bool) -> anyhow::Result<()> {
    if !pluresdb_server::is_loopback(&api_addr) {
        bail!("the API may only listen on loopback for now ({api_addr} is not); token-protected binding comes with the API issue");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(api_addr).await.with_context(|| format!("cannot listen on {api_addr}"))?;
        let bound = listener.local_addr().context("cannot read the bound address")?;
        let peer_id = db.peer_id().to_owned();
        {
            // Tell the user (and scripts) where the node is, then keep quiet.
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::json!({"peer_id": peer_id, "api": format!("http://{bound}")}))?;
            } else {
                writeln!(out, "pluresdb node {peer_id}")?;
                writeln!(out, "HTTP API on http://{bound}")?;
            }
            out.flush()?;
        }
        // CLI commands on this data directory find the node here.
        let addr_file = data_dir.join(crate::api_client::API_ADDR_FILE);
        let staged = data_dir.join(format!("{}.new", crate::api_client::API_ADDR_FILE));
        std::fs::write(&staged, format!("{bound}\n"))
            .and_then(|()| std::fs::rename(&staged, &addr_file))
            .with_context(|| format!("cannot write {}", addr_file.display()))?;
        tracing::info!(%peer_id, api = %bound, "node running");
        let replica = Arc::new(tokio::sync::Mutex::new(db));
        let served = pluresdb_server::serve(listener, replica.clone(), shutdown_signal()).await;
        if let Err(err) = std::fs::remove_file(&addr_file) {
            tracing::warn!(%err, path = %addr_file.display(), "cannot remove the API address file");
        }
        served.context("the API server failed")?;
        // Requests in flight have finished; every answered write is durable.
        tracing::info!("node stopped");
        eprintln!("stopped");
        Ok(())
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
