//! Secondary indexes on a running node: definitions go through the
//! writer (so each change is one commit beside the writes it covers), and
//! a build runs as a task that asks the writer for one slice at a time, so
//! writes and sync interleave with a long build.

use crate::writer::Command;
use crate::{Error, Handle};
use pluresdb_core::{Database, IndexDef, IndexSpec};
use pluresdb_store_redb::RedbStore;
use tokio::sync::oneshot;

/// Nodes indexed per build step (one commit each).
pub const BUILD_STEP_NODES: usize = 2_000;

/// What the writer does to the indexes.
pub(crate) enum IndexAction {
    Create(IndexSpec),
    BuildStep(String),
    Drop(String),
}

/// Carries out `action` on the writer's replica.
pub(crate) fn apply(db: &mut Database<RedbStore>, action: IndexAction) -> Result<IndexDef, pluresdb_core::Error> {
    match action {
        IndexAction::Create(spec) => db.create_index(&spec),
        IndexAction::BuildStep(name) => db.build_index_step(&name, BUILD_STEP_NODES),
        IndexAction::Drop(name) => db.drop_index(&name),
    }
}

impl Handle {
    async fn index_action(&self, action: IndexAction) -> Result<IndexDef, Error> {
        let (reply, answer) = oneshot::channel();
        self.inner.commands.send(Command::Index { action, reply }).await.map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Creates an index and starts building it over the nodes already
    /// stored (a task, a slice per commit); returns the definition at
    /// once. [`indexes`](Self::indexes) shows the build's progress.
    pub async fn create_index(&self, spec: IndexSpec) -> Result<IndexDef, Error> {
        let def = self.index_action(IndexAction::Create(spec)).await?;
        self.spawn_build(def.name.clone());
        Ok(def)
    }

    /// Drops an index and its entries.
    pub async fn drop_index(&self, name: &str) -> Result<IndexDef, Error> {
        self.index_action(IndexAction::Drop(name.to_owned())).await
    }

    /// The indexes, as last committed.
    pub fn indexes(&self) -> Result<Vec<IndexDef>, Error> {
        Ok(self.reader().indexes()?)
    }

    /// Builds index `name` to the end in a task (nothing when it is ready).
    pub(crate) fn spawn_build(&self, name: String) {
        let handle = self.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(index = %name, "no async runtime to build the index in: it stays unused until the node restarts");
            return;
        };
        runtime.spawn(async move {
            loop {
                match handle.index_action(IndexAction::BuildStep(name.clone())).await {
                    Ok(def) if def.is_ready() => {
                        tracing::info!(index = %name, "index built");
                        return;
                    }
                    Ok(_) => {}
                    // Dropped meanwhile, or the node stops.
                    Err(Error::Core(pluresdb_core::Error::NoSuchIndex { .. })) | Err(Error::Stopped) => return,
                    Err(err) if err.storage_fault().is_some() => {
                        // The store recovers by itself: try again shortly.
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Err(err) => {
                        tracing::error!(index = %name, error = %pluresdb_core::error_chain(&err), "index build stopped");
                        return;
                    }
                }
            }
        });
    }
}
