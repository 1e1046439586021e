//! When a commit that returned becomes visible: redb's commit after the
//! answer.
//!
//! A logged commit is durable once its record is synced: a redo would
//! apply it. So [`Store::commit`](pluresdb_core::Store::commit) returns
//! then, with the batch applied to a redb transaction that is not yet
//! committed: redb's commit (which makes it visible to new read
//! transactions; ~40 us of a single write's CPU, most of it
//! `flush_table_root_updates`) is held here and runs off the caller's path,
//! by whichever comes first: the node's writer once it has answered and sent
//! what the commit produced ([`RedbStore::publish`](crate::RedbStore::publish)),
//! a read, or the next commit.
//!
//! What must not happen is a read that misses a batch whose commit
//! returned: a client that got its `PUT`'s answer and then reads, a peer
//! that got an acknowledgement, a subscriber that got an event. So every
//! read of the store passes [`Visibility::wait`] before it opens a read
//! transaction: one atomic load when nothing is held (nearly always: the
//! writer publishes before it waits for more work), else it commits the
//! held transaction itself (or waits for the thread that does).
//!
//! If redb's commit fails, the batch is durable and stays so (its record is
//! not withdrawn): reads fail with the store's fault instead, and the
//! writer's next commit reports it, so that the store is reopened and the
//! log's redo makes the batch readable.

use crate::{fault_of, RedbStoreError};
use pluresdb_core::{Error, StorageFault};
use redb::WriteTransaction;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Whether the last commit that returned is visible to new read
/// transactions, and its transaction until it is.
#[derive(Default)]
pub struct Visibility {
    /// Whether `State` holds a transaction or a failure, read without the
    /// lock.
    behind: AtomicBool,
    /// Held while a transaction is committed: the readers that need it
    /// wait here.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The applied transaction of the last commit that returned, not yet
    /// committed to redb.
    held: Option<WriteTransaction>,
    /// Why redb could not commit it: reads fail with this until a reopen
    /// redoes it.
    failed: Option<(StorageFault, String)>,
    /// The same failure, for the writer's next commit (reported once).
    unreported: Option<Error>,
    /// The next commit fails (tests).
    #[cfg(test)]
    fail_next: bool,
}

impl Visibility {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under the lock panics but redb's commit, after which the
        // state is still whole (the transaction was taken out first).
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds `txn`, the applied transaction of a durable commit, until
    /// redb commits it; reads meanwhile commit it first. Call
    /// [`settle`](Self::settle) before the next transaction begins.
    pub fn hold(&self, txn: WriteTransaction) {
        let mut state = self.lock();
        state.held = Some(txn);
        self.behind.store(true, Ordering::Release);
    }

    /// Returns once every commit that returned is visible to a read
    /// transaction begun after it, committing the held transaction if
    /// there is one; fails with the store's fault if redb could not commit
    /// it.
    pub fn wait(&self) -> Result<(), Error> {
        if !self.behind.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut state = self.lock();
        self.publish(&mut state);
        readable(&state)
    }

    /// [`wait`](Self::wait) for the writer before its next transaction: a
    /// failure not reported yet is its error.
    pub fn settle(&self) -> Result<(), Error> {
        if !self.behind.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut state = self.lock();
        self.publish(&mut state);
        match state.unreported.take() {
            Some(err) => Err(err),
            None => readable(&state),
        }
    }

    /// A reopen made every durable commit readable (its redo applied
    /// those redb had not); call [`settle`](Self::settle) before it.
    pub fn reopened(&self) {
        let mut state = self.lock();
        state.failed = None;
        state.unreported = None;
        if state.held.is_none() {
            self.behind.store(false, Ordering::Release);
        }
    }

    /// Commits the held transaction, if any.
    fn publish(&self, state: &mut State) {
        let Some(txn) = state.held.take() else { return };
        #[cfg(test)]
        let txn = match std::mem::take(&mut state.fail_next) {
            true => {
                drop(txn);
                let err = Error::store_fault(StorageFault::Io, std::io::Error::other("a commit made to fail"));
                state.failed = Some((StorageFault::Io, pluresdb_core::error_chain(&err)));
                state.unreported = Some(err);
                return;
            }
            false => txn,
        };
        match txn.commit() {
            Ok(()) => self.behind.store(false, Ordering::Release),
            Err(err) => {
                // Whatever the cause, only a reopen (whose redo applies the
                // batch) makes it readable: a fault of the store.
                let source: redb::Error = err.into();
                let fault = fault_of(&source).unwrap_or(StorageFault::Io);
                let err = Error::store_fault(fault, RedbStoreError::Redb { step: "commit", source });
                state.failed = Some((fault, pluresdb_core::error_chain(&err)));
                state.unreported = Some(err);
            }
        }
    }

    /// Makes the next commit of a held transaction fail, as a failing
    /// medium would (tests).
    #[cfg(test)]
    pub fn fail_next(&self) {
        self.lock().fail_next = true;
    }

    /// Whether a transaction is held (tests).
    #[cfg(test)]
    pub fn holds(&self) -> bool {
        self.lock().held.is_some()
    }
}

/// `Ok` unless a commit that returned could not be made readable.
fn readable(state: &State) -> Result<(), Error> {
    match &state.failed {
        Some((fault, reason)) => Err(Error::store_fault(*fault, RedbStoreError::Unpublished { reason: reason.clone() })),
        None => Ok(()),
    }
}
