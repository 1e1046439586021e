//! Vector indexes on a running node (`pluresdb_vectors`): in memory,
//! following the change feed (every local and replicated change passes
//! through it), built from the store when created and at every start.
//! Their definitions are stored in the store's metadata.

use crate::{Error, Filter, Handle, WatchEvent};
use pluresdb_core::query::CheckedQuery;
use pluresdb_core::{Node, Store};
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
}

/// One index and its build.
struct Slot {
    index: VectorIndex,
    /// While building: the nodes the change feed updated since the build
    /// began (the build must not put back an older value of theirs).
    touched: Option<HashSet<String>>,
    built_ms: Option<u64>,
}

/// The node's vector indexes.
#[derive(Default)]
pub(crate) struct Vectors {
    slots: RwLock<BTreeMap<String, Slot>>,
    /// Whether the task that follows the change feed runs.
    following: std::sync::atomic::AtomicBool,
}

impl Vectors {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Slot>> {
        self.slots.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Slot>> {
        self.slots.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a change of node `id` (its value after, `None` if deleted)
    /// to every index.
    fn apply(&self, id: &str, value: Option<&Map<String, Value>>) {
        let mut slots = self.write();
        for slot in slots.values_mut().filter(|slot| id.starts_with(&slot.index.def().prefix)) {
            slot.index.upsert(id, value);
            if let Some(touched) = &mut slot.touched {
                touched.insert(id.to_owned());
            }
        }
    }
}

fn status(slot: &Slot) -> VectorStatus {
    let (skipped, last_skip) = slot.index.skipped();
    VectorStatus {
        def: slot.index.def().clone(),
        points: slot.index.len(),
        skipped,
        last_skip: last_skip.map(str::to_owned),
        building: slot.touched.is_some(),
        built_ms: slot.built_ms,
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
        slot.map(|slot| status(&slot)).ok_or_else(|| Error::Core(pluresdb_core::Error::NoSuchIndex { name: name.to_owned() }))
    }

    /// The vector indexes in memory.
    pub fn vector_indexes(&self) -> Vec<VectorStatus> {
        self.inner.vectors.read().values().map(status).collect()
    }

    /// The `k` nodes nearest `vector` in index `name` that pass `query`'s
    /// prefix and conditions (when given), with their distances, nearest
    /// first.
    pub fn vector_search(&self, name: &str, vector: &[f32], k: usize, query: Option<&CheckedQuery>) -> Result<Vec<(Node, f32)>, Error> {
        let k = k.clamp(1, pluresdb_vectors::MAX_K);
        let prefix = query.map(|q| q.prefix.as_str()).unwrap_or_default();
        // Conditions are checked on the nodes found: ask for more until k
        // pass (or the index has no more).
        let mut want = k;
        loop {
            let found = {
                let slots = self.inner.vectors.read();
                let slot = slots.get(name).ok_or_else(|| Error::Core(pluresdb_core::Error::NoSuchIndex { name: name.to_owned() }))?;
                slot.index
                    .search(vector, want, |id| id.starts_with(prefix))
                    .map_err(|err| Error::Core(pluresdb_core::Error::InvalidQuery { reason: format!("{err}") }))?
            };
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
    async fn follow_changes(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        if self.inner.vectors.following.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut watch = match self.watch(Filter::All, None).await {
            Ok(watch) => watch,
            Err(err) => {
                self.inner.vectors.following.store(false, Ordering::Release);
                return Err(err);
            }
        };
        let handle = self.clone();
        tokio::spawn(async move {
            loop {
                match watch.next().await {
                    Some(Ok(WatchEvent::Change { change, .. })) => {
                        handle.inner.vectors.apply(&change.op.node_id, change.node.as_ref().map(|n| &n.value));
                    }
                    Some(Ok(WatchEvent::Lagged { .. })) => {
                        // Changes were missed: subscribe again, then build
                        // every index again from the store.
                        tracing::warn!("the vector indexes fell behind the change feed; building them again");
                        watch = match handle.watch(Filter::All, None).await {
                            Ok(watch) => watch,
                            Err(_) => break,
                        };
                        let defs: Vec<VectorDef> = handle.vector_indexes().into_iter().map(|s| s.def).collect();
                        for def in defs {
                            if let Err(err) = handle.build_vector_index(def).await {
                                tracing::error!(error = %pluresdb_core::error_chain(&err), "cannot build a vector index again");
                            }
                        }
                    }
                    Some(Err(err)) => {
                        tracing::error!(error = %pluresdb_core::error_chain(&err), "the vector indexes stopped following changes");
                        break;
                    }
                    None => break,
                }
            }
            handle.inner.vectors.following.store(false, std::sync::atomic::Ordering::Release);
        });
        Ok(())
    }

    /// Builds index `def` from the stored nodes into a new slot (replacing
    /// any), while the change feed keeps updating it; returns the time taken.
    async fn build_vector_index(&self, def: VectorDef) -> Result<u64, Error> {
        let capacity = usize::try_from(self.reader().store().count_nodes(&def.prefix).unwrap_or(0)).unwrap_or(0);
        let name = def.name.clone();
        self.inner
            .vectors
            .write()
            .insert(name.clone(), Slot { index: VectorIndex::new(def.clone(), capacity), touched: Some(HashSet::new()), built_ms: None });
        let handle = self.clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            let reader = handle.shared_reader();
            let mut after: Option<String> = None;
            loop {
                let page = reader.list(&def.prefix, after.as_deref(), BUILD_PAGE)?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                let mut slots = handle.inner.vectors.write();
                let Some(slot) = slots.get_mut(&name) else { return Ok(()) };
                for node in &page {
                    if !slot.touched.as_ref().is_some_and(|t| t.contains(&node.id)) {
                        slot.index.upsert(&node.id, Some(&node.value));
                    }
                }
                drop(slots);
                if page.len() < BUILD_PAGE {
                    break;
                }
            }
            Ok(())
        })
        .await
        .map_err(|err| invalid(format!("the build stopped: {err}")))??;
        let ms = started.elapsed().as_millis() as u64;
        if let Some(slot) = self.inner.vectors.write().get_mut(&def.name) {
            slot.touched = None;
            slot.built_ms = Some(ms);
        }
        Ok(ms)
    }
}

/// Shared between the handle's clones.
pub(crate) type SharedVectors = Arc<Vectors>;
