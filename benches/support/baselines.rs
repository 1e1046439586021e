//! The limits of this machine that the benches print their figures
//! beside, measured in the same run: raw quinn (a stream's throughput, a
//! round trip) and raw redb (batched durable inserts).
#![allow(dead_code)]

use anyhow::{bail, Context};
use pluresdb_security::{tls, Identity};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records per write call of the quinn stream and per redb transaction.
pub const BATCH: usize = 1_000;
/// Round trips before the measured ones.
const WARMUP: usize = 100;
/// The table of the raw redb baselines.
const RAW: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("raw");

/// ~100 bytes of JSON per node (what the replication benches write).
pub fn value(i: usize) -> serde_json::Value {
    serde_json::json!({"name": format!("User {i}"), "email": format!("user{i}@example.org"), "age": i % 97, "city": "Lisbon", "team": "replication"})
}

/// Two quinn endpoints with the engines' TLS (certificates of two
/// identities), the client connected to the server.
pub async fn quinn_pair() -> anyhow::Result<(quinn::Endpoint, quinn::Endpoint, std::net::SocketAddr)> {
    let (server_id, client_id) = (Identity::from_seed([3; 32]), Identity::from_seed([4; 32]));
    let server_tls = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(&server_id)?)?;
    let server = quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(server_tls)), "127.0.0.1:0".parse()?)?;
    let client_tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls::client_config(&client_id, None)?)?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_tls)));
    let addr = server.local_addr()?;
    Ok((server, client, addr))
}

/// `records` framed records of `size` bytes over one raw quinn stream;
/// returns the time until the receiver has read them all.
pub async fn raw_quinn_stream(records: usize, size: usize) -> anyhow::Result<Duration> {
    let (server, client, addr) = quinn_pair().await?;
    let total = records * (4 + size);
    let receiver = tokio::spawn(async move {
        let connection = server.accept().await.context("no incoming connection")?.await?;
        let mut recv = connection.accept_uni().await?;
        let mut read = 0;
        while read < total {
            match recv.read_chunk(1 << 20, true).await? {
                Some(chunk) => read += chunk.bytes.len(),
                None => break,
            }
        }
        anyhow::Ok((read, connection))
    });
    let connection = client.connect(addr, "pluresdb")?.await?;
    let mut record = (size as u32).to_be_bytes().to_vec();
    record.resize(4 + size, 7);
    let chunk: Vec<u8> = record.iter().copied().cycle().take(record.len() * BATCH).collect();
    let started = Instant::now();
    let mut send = connection.open_uni().await?;
    let mut sent = 0;
    while sent < records {
        let n = (records - sent).min(BATCH);
        send.write_all(&chunk[..n * record.len()]).await?;
        sent += n;
    }
    send.finish()?;
    let (read, _server_side) = receiver.await??;
    let elapsed = started.elapsed();
    if read != total {
        bail!("raw quinn: received {read} of {total} bytes");
    }
    connection.close(0u32.into(), b"done");
    Ok(elapsed)
}

/// The same values, JSON-encoded, inserted straight into a redb table,
/// `BATCH` per durable transaction.
pub fn raw_redb(count: usize) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let db = redb::Database::create(dir.path().join("raw.redb"))?;
    let records: Vec<(String, Vec<u8>)> = (0..count).map(|i| (format!("bench:{i:08}"), value(i).to_string().into_bytes())).collect();
    let started = Instant::now();
    for chunk in records.chunks(BATCH) {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(RAW)?;
            for (id, bytes) in chunk {
                table.insert(id.as_str(), bytes.as_slice())?;
            }
        }
        txn.commit()?;
    }
    Ok(started.elapsed())
}

/// One value inserted into a redb table per durable transaction, `count`
/// times: what a single durable write costs redb on this disk, sorted.
pub fn raw_redb_single_commits(count: usize) -> anyhow::Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let db = redb::Database::create(dir.path().join("raw.redb"))?;
    let mut took = Vec::with_capacity(count);
    for i in 0..WARMUP + count {
        let (id, bytes) = (format!("bench:{i:08}"), value(i).to_string().into_bytes());
        let started = Instant::now();
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(RAW)?;
            table.insert(id.as_str(), bytes.as_slice())?;
        }
        txn.commit()?;
        if i >= WARMUP {
            took.push(started.elapsed());
        }
    }
    took.sort();
    Ok(took)
}

/// 100 bytes appended to a file and `fdatasync`ed, `count` times: the
/// floor of any durable write on this disk, sorted.
pub fn raw_fdatasync(count: usize) -> anyhow::Result<Vec<Duration>> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let mut file = std::fs::File::create(dir.path().join("raw.log"))?;
    let mut took = Vec::with_capacity(count);
    for i in 0..WARMUP + count {
        let started = Instant::now();
        file.write_all(&[7u8; 100])?;
        file.sync_data()?;
        if i >= WARMUP {
            took.push(started.elapsed());
        }
    }
    took.sort();
    Ok(took)
}

/// Round trips of 100-byte messages over one raw quinn bidirectional stream.
pub async fn raw_quinn_rtt(samples: usize) -> anyhow::Result<Vec<Duration>> {
    let (server, client, addr) = quinn_pair().await?;
    let echo = tokio::spawn(async move {
        let connection = server.accept().await.context("no incoming connection")?.await?;
        let (mut send, mut recv) = connection.accept_bi().await?;
        let mut message = [0u8; 100];
        loop {
            match recv.read_exact(&mut message).await {
                Ok(()) => send.write_all(&message).await?,
                Err(quinn::ReadExactError::FinishedEarly(_)) => break,
                Err(err) => return Err(err.into()),
            }
        }
        anyhow::Ok(())
    });
    let connection = client.connect(addr, "pluresdb")?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let message = [7u8; 100];
    let mut reply = [0u8; 100];
    let mut rtts = Vec::with_capacity(samples);
    for i in 0..WARMUP + samples {
        let started = Instant::now();
        send.write_all(&message).await?;
        recv.read_exact(&mut reply).await?;
        if i >= WARMUP {
            rtts.push(started.elapsed());
        }
    }
    send.finish()?;
    tokio::time::timeout(Duration::from_secs(5), echo).await.context("the echo task did not end")???;
    connection.close(0u32.into(), b"done");
    rtts.sort();
    Ok(rtts)
}
