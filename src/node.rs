//! `pluresdb serve`: the node. It starts the runtime over the replica and
//! serves the HTTP and WebSocket API until Ctrl-C or SIGTERM; the network
//! engines and discovery join it with their issues.

use crate::config::Config;
use crate::replica::Replica;
use anyhow::Context;
use std::io::Write;
use std::path::Path;

pub fn serve(db: Replica, data_dir: &Path, config: &Config, json: bool) -> anyhow::Result<()> {
    let api_addr = config.api_addr.value;
    let require_token = config.require_token.value || !pluresdb_server::is_loopback(&api_addr);
    let token = crate::keys::api_token(data_dir)?;
    let secret = crate::keys::network_secret(data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(api_addr).await.with_context(|| format!("cannot listen on {api_addr}"))?;
        let bound = listener.local_addr().context("cannot read the bound address")?;
        let options = pluresdb_runtime::RuntimeOptions { watch_buffer: config.watch_buffer.value, ..Default::default() };
        let node = pluresdb_runtime::Runtime::start(db, options)?;
        let handle = node.handle();
        let peer_id = handle.peer_id().to_owned();
        {
            // Tell the user (and scripts) where the node is, then keep quiet.
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"peer_id": peer_id, "api": format!("http://{bound}"), "token_required": require_token})
                )?;
            } else {
                writeln!(out, "pluresdb node {peer_id}")?;
                writeln!(out, "HTTP API on http://{bound} (routes: http://{bound}/openapi.json)")?;
                if require_token {
                    writeln!(out, "the API needs the token in {}", data_dir.join(crate::keys::API_TOKEN_FILE).display())?;
                }
            }
            out.flush()?;
        }
        // CLI commands on this data directory find the node here.
        let addr_file = data_dir.join(crate::api_client::API_ADDR_FILE);
        let staged = data_dir.join(format!("{}.new", crate::api_client::API_ADDR_FILE));
        std::fs::write(&staged, format!("{bound}\n"))
            .and_then(|()| std::fs::rename(&staged, &addr_file))
            .with_context(|| format!("cannot write {}", addr_file.display()))?;
        tracing::info!(%peer_id, api = %bound, require_token, "node running");
        let state = pluresdb_server::ApiState::new(handle, secret, token, require_token);
        let served = pluresdb_server::serve(listener, state, shutdown_signal()).await;
        if let Err(err) = std::fs::remove_file(&addr_file) {
            tracing::warn!(%err, path = %addr_file.display(), "cannot remove the API address file");
        }
        // Requests in flight have finished; the writer commits what it holds.
        node.shutdown().await;
        served.context("the API server failed")?;
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
