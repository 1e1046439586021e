//! Vector indexes on a running node (`pluresdb_vectors`): in memory,
//! following the change feed (every local and replicated change passes
//! through it), built from the store when created and at every start.
//! Their definitions are stored in the store's metadata.

use crate::{Error, Filter, Handle, WatchEvent};
use pluresdb_core::query::CheckedQuery;
use pluresdb_core::{Change, Node, Store};
use pluresdb_vectors::{VectorDef, VectorIndex};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};

/// The metadata key of the vector index definitions (JSON).
pub const VECTORS_META_KEY: &str = "vectors";

/// The most vector indexes a node keeps (each holds its vectors in memory).
pub const MAX_VECTOR_INDEXES: usize = 8;

/// Nodes read from the store at a time while building.
const BUILD_PAGE: usize = 1_000;

/// The most changes applied to the indexes at once (one batch, inserted
/// on every core; a node changed twice in a batch is inserted once).
const APPLY_BATCH: usize = 1_024;

/// After a failed attempt to follow the change feed, the first wait before
/// trying again; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(250);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// A vector index's state, as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorStatus {
    pub def: VectorDef,
    /// Points searches can find.
    pub points: usize,
    /// Nodes whose field is not a vector of the index's dimension.
    pub skipped: usize,
    /// Why the last of them was skipped.
    pub last_skip: Option<String>,
    /// Still reading the stored nodes (searches answer from what is in).
    pub building: bool,
    /// How long building from the store took, in ms.
    pub built_ms: Option<u64>,
    /// Builds from the store since the node started (the first, and one
    /// each time dead points reached a quarter of the graph).
    pub builds: u64,
    /// Times the indexes fell behind the change feed and caught up by
    /// replaying the op log from where they stopped (no build).
    pub caught_up: u64,
}

/// One index and its build.
struct Slot {
    index: VectorIndex,
    built_ms: std::sync::OnceLock<u64>,
    /// Builds of this index before this one (its name's), this one counted.
    builds: u64,
}

/// The node's vector indexes. Each slot is shared (`Arc`): the map's lock
/// is held only to find one, never while inserting or searching, so a
/// search never waits for inserts (the index itself takes both at once).
#[derive(Default)]
pub(crate) struct Vectors {
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    /// Whether the task that follows the change feed runs.
    following: std::sync::atomic::AtomicBool,
    /// See [`VectorStatus::caught_up`].
    caught_up: std::sync::atomic::AtomicU64,
}

impl Vectors {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Slot>>> {
        self.slots.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Slot>>> {
        self.slots.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.read().get(name).cloned()
    }

    /// Applies changes (node id, its value after, `None` if deleted; each
    /// id once) to every index, inserting on every core. Blocking.
    fn apply(&self, changes: &[Arc<Change>]) {
        let slots: Vec<Arc<Slot>> = self.read().values().cloned().collect();
        for slot in slots {
            let prefix = slot.index.def().prefix.as_str();
            let mine: Vec<(&str, Option<&Map<String, Value>>)> = changes
                .iter()
                .filter(|change| change.op.node_id.starts_with(prefix))
                .map(|change| (change.op.node_id.as_str(), change.node.as_ref().map(|n| &n.value)))
                .collect();
            slot.index.upsert_many(&mine);
        }
    }
}

fn status(slot: &Slot, caught_up: u64) -> VectorStatus {
    let (skipped, last_skip) = slot.index.skipped();
    VectorStatus {
        def: slot.index.def().clone(),
        points: slot.index.len(),
        skipped,
        last_skip,
        building: slot.index.is_loading(),
        built_ms: slot.built_ms.get().copied(),
        builds: slot.builds,
        caught_up,
    }
}

fn stored_defs(handle: &Handle) -> Result<Vec<VectorDef>, Error> {
    match handle.reader().meta(VECTORS_META_KEY)? {
        None => Ok(Vec::new()),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|err| Error::Core(pluresdb_core::Error::Decode { what: "vector index definitions", reason: err.to_string() })),
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::Core(pluresdb_core::Error::InvalidIndex { reason: reason.into() })
}

impl Handle {
    /// Creates a vector index and builds it from the stored nodes; answers
    /// once built. From then on it follows every change.
    pub async fn create_vector_index(&self, def: VectorDef) -> Result<VectorStatus, Error> {
        def.check().map_err(|err| invalid(err.to_string()))?;
        {
            let _guard = self.inner.meta_lock.lock().await;
            let mut defs = stored_defs(self)?;
            if defs.len() >= MAX_VECTOR_INDEXES {
                return Err(invalid(format!("a node keeps at most {MAX_VECTOR_INDEXES} vector indexes")));
            }
            if defs.iter().any(|d| d.name == def.name) {
                return Err(invalid(format!("a vector index named {:?} exists", def.name)));
            }
            defs.push(def.clone());
            self.commit_meta(vec![(VECTORS_META_KEY.into(), serde_json::to_vec(&defs).unwrap_or_default())]).await?;
        }
        self.follow_changes().await?;
        self.build_vector_index(def.clone()).await?;
        self.vector_indexes()
            .into_iter()
            .find(|s| s.def.name == def.name)
            .ok_or_else(|| Error::Core(pluresdb_core::Error::NoSuchIndex { name: def.name }))
    }

    /// Drops a vector index.
    pub async fn drop_vector_index(&self, name: &str) -> Result<VectorStatus, Error> {
        let _guard = self.inner.meta_lock.lock().await;
        let mut defs = stored_defs(self)?;
        let Some(at) = defs.iter().position(|d| d.name == name) else {
            return Err(Error::Core(pluresdb_core::Error::NoSuchIndex { name: name.to_owned() }));
        };
        defs.remove(at);
        self.commit_meta(vec![(VECTORS_META_KEY.into(), serde_json::to_vec(&defs).unwrap_or_default())]).await?;
        let slot = self.inner.vectors.write().remove(name);
        let caught_up = self.inner.vectors.caught_up.load(std::sync::atomic::Ordering::Relaxed);
        slot.map(|slot| status(&slot, caught_up)).ok_or_else(|| Error::Core(pluresdb_core::Error::NoSuchIndex { name: name.to_owned() }))
    }

    /// The vector indexes in memory.
    pub fn vector_indexes(&self) -> Vec<VectorStatus> {
        let caught_up = self.inner.vectors.caught_up.load(std::sync::atomic::Ordering::Relaxed);
        self.inner.vectors.read().values().map(|slot| status(slot, caught_up)).collect()
    }

    /// The `k` nodes nearest `vector` in index `name` that pass `query`'s
    /// prefix and conditions (when given), with their distances, nearest
    /// first. Blocking for up to a few milliseconds: call it where that is
    /// allowed (`spawn_blocking`).
    pub fn vector_search(&self, name: &str, vector: &[f32], k: usize, query: Option<&CheckedQuery>) -> Result<Vec<(Node, f32)>, Error> {
        let k = k.clamp(1, pluresdb_vectors::MAX_K);
        let prefix = query.map(|q| q.prefix.as_str()).unwrap_or_default();
        let slot = self.inner.vectors.slot(name).ok_or_else(|| Error::Core(pluresdb_core::Error::NoSuchIndex { name: name.to_owned() }))?;
        // Conditions are checked on the nodes found: ask for more until k
        // pass (or the index has no more).
        let mut want = k;
        loop {
            let found = slot
                .index
                .search(vector, want, |id| id.starts_with(prefix))
                .map_err(|err| Error::Core(pluresdb_core::Error::InvalidQuery { reason: format!("{err}") }))?;
            let exhausted = found.len() < want;
            let ids: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
            let nodes: Vec<Option<Node>> = ids.iter().map(|id| self.reader().get(id)).collect::<Result<_, _>>()?;
            let passing: Vec<(Node, f32)> = found
                .iter()
                .zip(nodes)
                .filter_map(|((_, distance), node)| node.map(|n| (n, *distance)))
                .filter(|(node, _)| query.is_none_or(|q| pluresdb_core::query::selects(q, node)))
                .take(k)
                .collect();
            if passing.len() >= k || exhausted || want >= pluresdb_vectors::MAX_K {
                return Ok(passing);
            }
            want = (want * 4).min(pluresdb_vectors::MAX_K);
        }
    }

    /// Starts following the change feed (once), then builds every stored
    /// vector index from the store. Called at start.
    pub(crate) fn start_vectors(&self) {
        let defs = match stored_defs(self) {
            Ok(defs) if defs.is_empty() => return,
            Ok(defs) => defs,
            Err(err) => {
                tracing::error!(error = %pluresdb_core::error_chain(&err), "cannot read the vector index definitions");
                return;
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no async runtime to build the vector indexes in");
            return;
        };
        let handle = self.clone();
        runtime.spawn(async move {
            if let Err(err) = handle.follow_changes().await {
                tracing::error!(error = %pluresdb_core::error_chain(&err), "vector indexes cannot follow the change feed");
                return;
            }
            for def in defs {
                let name = def.name.clone();
                match handle.build_vector_index(def).await {
                    Ok(ms) => tracing::info!(index = %name, ms, "vector index built from the store"),
                    Err(err) => tracing::error!(index = %name, error = %pluresdb_core::error_chain(&err), "cannot build the vector index"),
                }
            }
        });
    }

    /// Subscribes to the change feed (before any build reads the store,
    /// so no change falls between the two) and applies every change to the
    /// vector indexes, in a task; once.
    ///
    /// Changes are taken in batches of up to [`APPLY_BATCH`] (what the feed
    /// holds ready), inserted on every core off the async threads. A burst
    /// faster than that overflows the watch's buffer: the task then resumes
    /// from the position the watch reports, replaying the op log (nodes as
    /// they are now), so falling behind costs the changes missed, never a
    /// build from the store. Only when the feed cannot be resumed (an
    /// error) are the indexes built again, waiting [`RETRY_MIN`] doubling
    /// to [`RETRY_MAX`] between attempts.
    async fn follow_changes(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        if self.inner.vectors.following.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let watch = match self.watch(Filter::All, None).await {
            Ok(watch) => watch,
            Err(err) => {
                self.inner.vectors.following.store(false, Ordering::Release);
                return Err(err);
            }
        };
        let handle = self.clone();
        tokio::spawn(async move {
            handle.follow(watch).await;
            handle.inner.vectors.following.store(false, Ordering::Release);
        });
        Ok(())
    }

    /// The loop of [`follow_changes`](Self::follow_changes); returns when
    /// the node stops.
    async fn follow(&self, mut watch: crate::Watch) {
        let mut retry = RETRY_MIN;
        loop {
            let Some(first) = watch.next().await else { return };
            // Take what else the feed holds ready, up to a batch.
            let mut events = vec![first];
            while events.len() < APPLY_BATCH {
                let ready = tokio::select! {
                    biased;
                    event = watch.next() => event,
                    () = std::future::ready(()) => None,
                };
                match ready {
                    Some(event) => events.push(event),
                    None => break,
                }
            }
            let mut batch: Vec<Arc<Change>> = Vec::with_capacity(events.len());
            let mut resume_from = None;
            let mut failed = None;
            for event in events {
                match event {
                    Ok(WatchEvent::Change { change, .. }) => batch.push(change),
                    Ok(WatchEvent::Lagged { missed, resume_from: from }) => {
                        tracing::info!(missed, "the vector indexes fell behind the change feed; replaying the op log from there");
                        resume_from = Some(from);
                    }
                    Err(err) => failed = Some(err),
                }
            }
            self.apply_changes(batch).await;
            if let Some(err) = failed {
                tracing::error!(error = %pluresdb_core::error_chain(&err), "the vector indexes cannot follow the change feed; building them again");
                watch = match self.rebuild_all_after(retry).await {
                    Some(watch) => watch,
                    None => return,
                };
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
            if let Some(from) = resume_from {
                watch = match self.watch(Filter::All, Some(from)).await {
                    Ok(watch) => {
                        self.inner.vectors.caught_up.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        watch
                    }
                    Err(Error::Stopped) => return,
                    Err(err) => {
                        tracing::error!(error = %pluresdb_core::error_chain(&err), "cannot resume the change feed; building the vector indexes again");
                        match self.rebuild_all_after(retry).await {
                            Some(watch) => watch,
                            None => return,
                        }
                    }
                };
                continue;
            }
            retry = RETRY_MIN;
            // Dead points (updates, deletes) slow searches: past a quarter
            // of the graph, build the index again.
            let worn: Vec<VectorDef> = self
                .inner
                .vectors
                .read()
                .values()
                .filter(|slot| !slot.index.is_loading() && slot.index.needs_rebuild())
                .map(|slot| slot.index.def().clone())
                .collect();
            for def in worn {
                let handle = self.clone();
                tokio::spawn(async move {
                    if let Err(err) = handle.build_vector_index(def).await {
                        tracing::error!(error = %pluresdb_core::error_chain(&err), "cannot build a vector index again");
                    }
                });
            }
        }
    }

    /// Applies a batch to the indexes (the last change of each node) off
    /// the async threads.
    async fn apply_changes(&self, mut batch: Vec<Arc<Change>>) {
        if batch.is_empty() {
            return;
        }
        // Keep each node's last change, in the order they came.
        let mut seen = HashSet::with_capacity(batch.len());
        batch.reverse();
        batch.retain(|change| seen.insert(change.op.node_id.clone()));
        batch.reverse();
        let vectors = self.inner.vectors.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || vectors.apply(&batch)).await {
            tracing::error!(error = %err, "applying changes to the vector indexes stopped");
        }
    }

    /// Waits `wait`, subscribes afresh and builds every index again from
    /// the store; `None` when the node stops.
    async fn rebuild_all_after(&self, wait: std::time::Duration) -> Option<crate::Watch> {
        tokio::time::sleep(wait).await;
        let watch = match self.watch(Filter::All, None).await {
            Ok(watch) => watch,
            Err(_) => return None,
        };
        let defs: Vec<VectorDef> = self.vector_indexes().into_iter().map(|s| s.def).collect();
        for def in defs {
            let handle = self.clone();
            // In a task: the new watch must be read meanwhile.
            tokio::spawn(async move {
                if let Err(err) = handle.build_vector_index(def).await {
                    tracing::error!(error = %pluresdb_core::error_chain(&err), "cannot build a vector index again");
                }
            });
        }
        Some(watch)
    }

    /// Builds index `def` from the stored nodes into a new slot (replacing
    /// any), while the change feed keeps updating it; returns the time taken.
    async fn build_vector_index(&self, def: VectorDef) -> Result<u64, Error> {
        let capacity = usize::try_from(self.reader().store().count_nodes(&def.prefix).unwrap_or(0)).unwrap_or(0);
        let name = def.name.clone();
        let index = VectorIndex::new(def.clone(), capacity);
        index.start_loading();
        let slot = {
            let mut slots = self.inner.vectors.write();
            let builds = slots.get(&name).map_or(0, |old| old.builds) + 1;
            let slot = Arc::new(Slot { index, built_ms: Default::default(), builds });
            slots.insert(name.clone(), slot.clone());
            slot
        };
        let handle = self.clone();
        let started = std::time::Instant::now();
        let loading = slot.clone();
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            let reader = handle.shared_reader();
            let mut after: Option<String> = None;
            loop {
                // Dropped, or replaced by a newer build: stop.
                if !handle.inner.vectors.slot(&name).is_some_and(|current| Arc::ptr_eq(&current, &loading)) {
                    return Ok(());
                }
                let page = reader.list(&def.prefix, after.as_deref(), BUILD_PAGE)?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                let nodes: Vec<(&str, &Map<String, Value>)> = page.iter().map(|node| (node.id.as_str(), &node.value)).collect();
                loading.index.load(&nodes);
                if page.len() < BUILD_PAGE {
                    break;
                }
            }
            Ok(())
        })
        .await
        .map_err(|err| invalid(format!("the build stopped: {err}")))??;
        let ms = started.elapsed().as_millis() as u64;
        slot.index.finish_loading();
        let _ = slot.built_ms.set(ms);
        Ok(ms)
    }
}

/// Shared between the handle's clones.
pub(crate) type SharedVectors = Arc<Vectors>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Runtime, RuntimeOptions, WriteKind};
    use pluresdb_core::Database;
    use pluresdb_store_redb::RedbStore;
    use pluresdb_vectors::Metric;
    use serde_json::json;
    use std::time::{Duration, Instant};

    /// A seeded vector of 8 components.
    fn vector(seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..8)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 1_000) as f32 / 1_000.0 - 0.5
            })
            .collect()
    }

    /// Whether index `name` holds exactly the vectors of the stored nodes
    /// under `prefix` (no more, none stale).
    fn matches_store(handle: &Handle, name: &str, prefix: &str) -> bool {
        let Some(slot) = handle.inner.vectors.slot(name) else { return false };
        let mut stored = 0;
        let mut after: Option<String> = None;
        loop {
            let page = handle.reader().list(prefix, after.as_deref(), 500).unwrap();
            for node in &page {
                if !slot.index.holds(&node.id, &node.value) {
                    return false;
                }
                stored += 1;
            }
            match page.last() {
                Some(last) if page.len() == 500 => after = Some(last.id.clone()),
                _ => break,
            }
        }
        slot.index.len() == stored
    }

    /// A burst of changes far past the change feed's buffer: the indexes
    /// fall behind, catch up by replaying the op log (never a build from
    /// the store, which could repeat under a steady stream), searches
    /// answer throughout, and the index ends holding exactly the stored
    /// vectors (new, replaced, unchanged, deleted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_past_the_watch_buffer_is_caught_up_without_a_build() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(RedbStore::open(dir.path()).unwrap(), "a").unwrap();
        let runtime = Runtime::start(db, RuntimeOptions { watch_buffer: 16, ..RuntimeOptions::default() }).unwrap();
        let handle = runtime.handle();
        let def = VectorDef { name: "v".into(), prefix: "v:".into(), field: "e".into(), dimension: 8, metric: Metric::Cosine };
        handle.create_vector_index(def).await.unwrap();

        // Searches run throughout the burst, each must answer.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let searching = {
            let (handle, stop) = (handle.clone(), stop.clone());
            tokio::task::spawn_blocking(move || {
                let mut answered = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    handle.vector_search("v", &vector(7), 5, None).unwrap();
                    answered += 1;
                    std::thread::yield_now();
                }
                answered
            })
        };
        // 3,000 new nodes in one commit (the feed's buffer holds 16), then
        // 1,000 replaced vectors, 500 writes that keep the vector, 100
        // deletes and nodes outside the prefix.
        let nodes: Vec<(String, Value)> = (0..3_000).map(|i| (format!("v:{i:04}"), json!({"e": vector(i), "n": 0}))).collect();
        handle.import(nodes).await.unwrap();
        let replaced: Vec<(String, Value)> =
            (0..1_000).map(|i| (format!("v:{:04}", i * 3), json!({"e": vector(10_000 + i), "n": 1}))).collect();
        handle.import(replaced).await.unwrap();
        for i in 0..500u64 {
            let id = format!("v:{:04}", i * 3 + 1);
            handle.write(WriteKind::Update, id, json!({"n": 2})).await.unwrap();
        }
        for i in 0..100u64 {
            handle.write(WriteKind::Delete, format!("v:{:04}", i * 7 + 2), Value::Null).await.unwrap();
        }
        let elsewhere: Vec<(String, Value)> = (0..2_000).map(|i| (format!("w:{i:04}"), json!({"e": vector(i)}))).collect();
        handle.import(elsewhere).await.unwrap();

        let deadline = Instant::now() + Duration::from_secs(120);
        while !matches_store(&handle, "v", "v:") {
            assert!(Instant::now() < deadline, "the index never came to hold exactly the stored vectors: {:?}", handle.vector_indexes());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        let answered = searching.await.unwrap();
        assert!(answered > 0);
        let status = handle.vector_indexes().remove(0);
        assert_eq!(status.points, 2_900, "{status:?}");
        assert!(status.caught_up >= 1, "the burst must have overflowed the feed's buffer: {status:?}");
        assert_eq!(status.builds, 1, "falling behind must not build the index again: {status:?}");
        runtime.shutdown().await;
    }
}
