//! Forks in a small deterministic network of sync engines: a replica
//! restored from an older copy of its store writes again, and a copy of a
//! replica's store writes with the same key next to the original. Every
//! replica converges on the same state, every acknowledged write is there,
//! and other origins keep replicating: no replica refuses a batch.

use pluresdb_core::signing::stand_in::{NamedSigner, NamedVerifier};
use pluresdb_core::{Database, MemoryStore, OperationType, OperationWithMetadata, Store};
use pluresdb_sync::sim::Rng;
use pluresdb_sync::{DataSyncEngine, SyncConfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

type Engine = DataSyncEngine<MemoryStore>;

fn config() -> SyncConfig {
    SyncConfig {
        enable_auto_sync: true,
        sync_interval: Duration::from_millis(1_000),
        max_batch_size: 256,
        enable_conflict_resolution: true,
        sync_timeout: Duration::from_millis(3_000),
        ..SyncConfig::default()
    }
}

fn engine(peer: &str, store: MemoryStore) -> Engine {
    let db = Database::open(store, peer).unwrap().with_signer(Arc::new(NamedSigner(peer.into()))).with_verifier(Arc::new(NamedVerifier));
    DataSyncEngine::with_database(config(), db).unwrap()
}

/// Engines on links that lose a share of the messages; an engine sends to
/// the linked engine that has the name it addresses (two engines may share
/// a name: copies of one replica, each linked to other peers).
struct Net {
    engines: Vec<Engine>,
    names: Vec<String>,
    links: Vec<Vec<bool>>,
    queue: VecDeque<(usize, usize, Vec<u8>)>,
    now: u64,
    rng: Rng,
    loss: f64,
    /// Every acknowledged write: node id -> value.
    written: BTreeMap<String, Value>,
}

impl Net {
    fn new(names: &[&str], seed: u64) -> Net {
        let n = names.len();
        let mut net = Net {
            engines: Vec::new(),
            names: names.iter().map(|s| s.to_string()).collect(),
            links: vec![vec![false; n]; n],
            queue: VecDeque::new(),
            now: 1_700_000_000_000,
            rng: Rng::new(seed),
            loss: 0.1,
            written: BTreeMap::new(),
        };
        for name in names {
            let mut e = engine(name, MemoryStore::new());
            e.start(net.now);
            net.engines.push(e);
        }
        net
    }

    fn connect(&mut self, a: usize, b: usize) {
        self.links[a][b] = true;
        self.links[b][a] = true;
        let (na, nb) = (self.names[a].clone(), self.names[b].clone());
        self.engines[a].peer_connected(&nb, self.now);
        self.engines[b].peer_connected(&na, self.now);
        self.flush(a);
        self.flush(b);
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        self.links[a][b] = false;
        self.links[b][a] = false;
        let (na, nb) = (self.names[a].clone(), self.names[b].clone());
        self.engines[a].peer_disconnected(&nb);
        self.engines[b].peer_disconnected(&na);
    }

    /// Replaces engine `i` by one over `store` (a restore), disconnected.
    fn replace(&mut self, i: usize, store: MemoryStore) {
        for j in 0..self.engines.len() {
            if self.links[i][j] {
                self.disconnect(i, j);
            }
        }
        let mut e = engine(&self.names[i].clone(), store);
        e.start(self.now);
        self.engines[i] = e;
    }

    fn flush(&mut self, from: usize) {
        while let Some(t) = self.engines[from].poll_transmit() {
            let to = (0..self.names.len()).find(|&j| self.links[from][j] && self.names[j] == t.peer);
            if let Some(to) = to {
                if !self.rng.chance(self.loss) {
                    self.queue.push_back((from, to, t.bytes));
                }
            }
        }
    }

    /// Writes a new node on engine `i` (acknowledged when this returns).
    fn write(&mut self, i: usize, id: &str) {
        let value = json!({"by": i, "id": id});
        let op = OperationWithMetadata::new(OperationType::CreateNode, id.to_owned(), value.clone(), self.engines[i].peer_id().to_owned());
        self.engines[i].write(vec![op], self.now).unwrap();
        self.written.insert(id.to_owned(), value);
        self.flush(i);
    }

    /// Delivers the next message, if there is one.
    fn step(&mut self) -> bool {
        let Some((from, to, bytes)) = self.queue.pop_front() else { return false };
        self.now += 1;
        let name = self.names[from].clone();
        self.engines[to].handle_input(&name, &bytes, self.now).unwrap();
        self.flush(to);
        true
    }

    /// Delivers messages and runs timers for `ms` of virtual time. Every
    /// message must be taken: a refused one fails the test.
    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        loop {
            if let Some((from, to, bytes)) = self.queue.pop_front() {
                self.now += 1;
                let name = self.names[from].clone();
                if let Err(err) = self.engines[to].handle_input(&name, &bytes, self.now) {
                    panic!("{} refused a message from {name}: {}", self.names[to], pluresdb_core::error_chain(&err));
                }
                self.flush(to);
                continue;
            }
            let next = self.engines.iter().filter_map(|e| e.poll_timeout()).min().unwrap_or(end).max(self.now + 1);
            if next > end {
                self.now = end;
                return;
            }
            self.now = next;
            for i in 0..self.engines.len() {
                if self.engines[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    self.engines[i].handle_timeout(self.now);
                    self.flush(i);
                }
            }
        }
    }

    /// Runs without loss until every replica agrees and holds every
    /// acknowledged write, or fails after a minute of virtual time.
    fn converge(&mut self) {
        self.loss = 0.0;
        for _ in 0..60 {
            self.run(1_000);
            if self.disagreement().is_none() {
                return;
            }
        }
        panic!("no convergence: {}", self.disagreement().unwrap_or_default());
    }

    fn disagreement(&self) -> Option<String> {
        let records = |e: &Engine| e.database().store().scan_nodes("", None, usize::MAX).unwrap();
        let first = records(&self.engines[0]);
        for (i, e) in self.engines.iter().enumerate() {
            if e.database().version_vector() != self.engines[0].database().version_vector() {
                return Some(format!("{i}: {:?} vs {:?}", e.database().version_vector(), self.engines[0].database().version_vector()));
            }
            if records(e) != first {
                return Some(format!("{i} holds other records than 0"));
            }
            for (id, value) in &self.written {
                match e.database().get(id).unwrap() {
                    Some(node) if Value::Object(node.value.clone()) == *value => {}
                    other => return Some(format!("{i} lacks the acknowledged write {id}: {other:?}")),
                }
            }
        }
        None
    }

    fn fork_count(&self, i: usize, origin: &str) -> u64 {
        let status = self.engines[i].status();
        status.forks.iter().find(|f| f.origin == origin).map_or(0, |f| f.count)
    }
}

/// `a` is restored from a copy of its store made 10 writes ago, writes
/// while offline, then meets `b` and `c`, which hold its later writes.
#[test]
fn a_replica_restored_from_an_old_copy_converges_with_every_write() {
    for seed in 0..20 {
        let mut net = Net::new(&["a", "b", "c"], seed);
        net.connect(0, 1);
        net.connect(1, 2);
        net.connect(0, 2);
        for n in 0..10 {
            net.write(0, &format!("a:{n}"));
            net.write(1, &format!("b:{n}"));
        }
        net.converge();
        let backup = net.engines[0].database().store().clone();
        for n in 10..20 {
            net.write(0, &format!("a:{n}"));
        }
        net.converge();
        net.replace(0, backup);
        for n in 0..3 + seed as usize % 12 {
            net.write(0, &format!("a:offline:{n}"));
        }
        net.connect(0, 1);
        net.connect(0, 2);
        // Other origins keep replicating while the fork is settled.
        net.loss = 0.1;
        net.write(1, "b:during");
        net.run(2_000);
        net.converge();
        // Its offline writes lost (the original branch is older) and were
        // written again after the original ones.
        assert!(net.fork_count(0, "a") >= 1, "seed {seed}: the restored replica reports the fork");
    }
}

/// `d` runs on a copy of `a`'s store with `a`'s key; both write, in equal
/// or different numbers, while each reaches the other only through `b` and
/// `c`.
#[test]
fn a_copy_writing_next_to_its_original_converges_with_every_write() {
    for seed in 0..20 {
        // a - b - c - d, where d is named "a" too (the copy).
        let mut net = Net::new(&["a", "b", "c", "a"], seed);
        net.connect(0, 1);
        net.connect(1, 2);
        for n in 0..5 {
            net.write(0, &format!("a:{n}"));
        }
        net.converge_part(&[0, 1, 2]);
        let copy = net.engines[0].database().store().clone();
        net.replace(3, copy);
        net.connect(2, 3);
        let (on_a, on_d) = (1 + seed as usize % 4, 1 + (seed as usize / 4) % 4);
        for n in 0..on_a.max(on_d) {
            if n < on_a {
                net.write(0, &format!("a:original:{n}"));
            }
            if n < on_d {
                net.write(3, &format!("a:copy:{n}"));
            }
            net.write(1, &format!("b:{n}"));
            net.run(50);
        }
        net.converge();
        assert!((0..4).map(|i| net.fork_count(i, "a")).sum::<u64>() >= 1, "seed {seed}: a fork was settled");
    }
}

impl Net {
    /// [`Net::converge`] among some engines only (the others are not
    /// linked yet).
    fn converge_part(&mut self, part: &[usize]) {
        self.loss = 0.0;
        for _ in 0..60 {
            self.run(1_000);
            let vv = self.engines[part[0]].database().version_vector().clone();
            if part.iter().all(|&i| self.engines[i].database().version_vector() == &vv) {
                self.loss = 0.1;
                return;
            }
        }
        panic!("the first engines did not converge");
    }
}

/// A replica restored from an older copy learns from its first exchange
/// that a peer holds more of its own log (its driver holds writes back
/// meanwhile), and gets those operations back before it writes: no fork.
#[test]
fn a_restored_replica_takes_its_own_operations_back_before_it_writes() {
    let mut net = Net::new(&["a", "b"], 7);
    net.loss = 0.0;
    net.connect(0, 1);
    for n in 0..10 {
        net.write(0, &format!("a:{n}"));
    }
    net.converge();
    let backup = net.engines[0].database().store().clone();
    for n in 10..300 {
        net.write(0, &format!("a:{n}"));
    }
    net.converge();
    net.replace(0, backup);
    assert!(!net.engines[0].own_chain_behind(), "alone, the restored replica cannot know");
    net.connect(0, 1);
    let mut saw_behind = false;
    for _ in 0..1_000 {
        saw_behind |= net.engines[0].own_chain_behind();
        if !net.step() {
            break;
        }
    }
    assert!(saw_behind, "the peer's request showed that it holds more of a's log");
    assert!(!net.engines[0].own_chain_behind());
    assert_eq!(net.engines[0].database().version_vector().get("a"), 300, "a took its own operations back");
    net.write(0, "a:after-restore");
    net.converge();
    assert_eq!(net.fork_count(0, "a") + net.fork_count(1, "a"), 0, "no sequence number was used twice");
}
