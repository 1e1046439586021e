//! The thread that applies a commit to redb while the writer syncs its log
//! record.
//!
//! A commit's two costly steps do not depend on each other: writing and
//! syncing the log record (an `fdatasync`, ~0.1 ms, spent waiting for the
//! disk) and applying the batch to a redb write transaction (CPU). Only the
//! transaction's commit, which makes the batch visible to readers, must come
//! after the sync. So the writer hands the payload to this thread, writes
//! and syncs the record meanwhile, and then takes the applied transaction
//! back (see [`crate::visibility`] for when it commits it to redb). The
//! writer waits for the applier on every commit, so
//! the two never hold a transaction or the payload across commits; the
//! thread sleeps between commits. Handing the work over costs the writer
//! one wakeup (a futex wake, ~2-4 us); the applier is done before the sync
//! is, so for a single write the writer usually does not wait for it. On a
//! machine too busy to give the applier a CPU in time, the writer applies
//! the batch itself after the sync, as it did before the applier.

use crate::{apply_commit, fail};
use pluresdb_core::Error;
use redb::{Database as Redb, Durability, WriteTransaction};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What the applier is to apply: `payload` (see [`crate::wal::encode`]),
/// as commit `number`, in a new transaction on `db` without durability.
pub struct Job {
    pub db: Arc<Redb>,
    pub payload: Arc<Vec<u8>>,
    pub number: u64,
    /// Tests make the apply fail after it wrote everything.
    #[cfg(test)]
    pub fault: Option<Fault>,
}

/// How a test makes an apply fail.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// It returns an error.
    Error,
    /// It panics.
    Panic,
}

/// The applier's outcome: the applied transaction, uncommitted, or why
/// there is none; a panic while applying is carried to the writer.
pub type Outcome = std::thread::Result<Result<WriteTransaction, Error>>;

#[derive(Default)]
struct State {
    job: Option<Job>,
    outcome: Option<Outcome>,
    /// The writer sleeps on `done` (so the applier wakes it).
    writer_waiting: bool,
    stop: bool,
    /// See [`Applier::taken_back`].
    #[cfg(test)]
    taken_back: u64,
    /// See [`Applier::hold`].
    #[cfg(test)]
    held: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// A job or `stop` was set.
    work: Condvar,
    /// An outcome was set.
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing runs under the lock that can panic.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The applier thread of a writer; it ends when this is dropped.
pub struct Applier {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The applier's stack: redb's tree operations recurse by the tree's depth
/// only.
const STACK_BYTES: usize = 512 * 1024;

impl Applier {
    /// Starts the thread.
    pub fn spawn() -> std::io::Result<Applier> {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new().name("pluresdb-apply".into()).stack_size(STACK_BYTES).spawn(move || run(&theirs))?;
        Ok(Applier { shared, thread: Some(thread) })
    }

    /// Applies `job` on the applier thread while `meanwhile` runs on this
    /// one, and returns both results once both are done. A job the
    /// applier has not taken up by then (it did not get a CPU: the machine
    /// is busy) is applied here instead of waited for, so a commit takes
    /// at most about as long as without the applier. The job, and so its
    /// references to the file and the payload, is dropped before this
    /// returns.
    pub fn overlap<T>(&self, job: Job, meanwhile: impl FnOnce() -> T) -> (Outcome, T) {
        self.shared.lock().job = Some(job);
        self.shared.work.notify_one();
        // Waits for the outcome also when `meanwhile` panics: the next
        // commit must not find this one's.
        let waiting = Wait { shared: &self.shared };
        let during = meanwhile();
        let outcome = waiting.outcome();
        (outcome, during)
    }

    /// How many jobs the applier had not taken up when their writer was
    /// done, so that it applied them itself (tests).
    #[cfg(test)]
    pub fn taken_back(&self) -> u64 {
        self.shared.lock().taken_back
    }

    /// Whether the applier has taken up the job given to it (tests).
    #[cfg(test)]
    pub fn taken_up(&self) -> bool {
        self.shared.lock().job.is_none()
    }

    /// Keeps the applier from taking up jobs, as a busy machine that gives
    /// it no CPU does (tests).
    #[cfg(test)]
    pub fn hold(&self, held: bool) {
        self.shared.lock().held = held;
        self.shared.work.notify_one();
    }
}

/// Waits for the applier's outcome (on drop, too).
struct Wait<'a> {
    shared: &'a Shared,
}

impl Wait<'_> {
    fn outcome(self) -> Outcome {
        let mut state = self.shared.lock();
        if let Some(job) = state.job.take() {
            #[cfg(test)]
            {
                state.taken_back += 1;
            }
            drop(state);
            std::mem::forget(self);
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply_job(job)));
        }
        let outcome = self.wait(state);
        std::mem::forget(self);
        outcome
    }

    fn wait(&self, mut state: MutexGuard<'_, State>) -> Outcome {
        loop {
            if let Some(outcome) = state.outcome.take() {
                state.writer_waiting = false;
                return outcome;
            }
            state.writer_waiting = true;
            state = self.shared.done.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Drop for Wait<'_> {
    /// The writer panicked: a job not taken up is dropped, one taken up
    /// waited for.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if state.job.take().is_none() {
            drop(self.wait(state));
        }
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared) {
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                #[cfg(test)]
                let held = state.held;
                #[cfg(not(test))]
                let held = false;
                if let Some(job) = state.job.take_if(|_| !held) {
                    break job;
                }
                if state.stop {
                    return;
                }
                state = shared.work.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        // The job is dropped inside, also when applying panics.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply_job(job)));
        let mut state = shared.lock();
        state.outcome = Some(outcome);
        if state.writer_waiting {
            drop(state);
            shared.done.notify_one();
        }
        if let Some(hook) = IDLE_HOOK.get() {
            hook();
        }
    }
}

/// See [`set_idle_hook`].
static IDLE_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what the applier threads call each time they have handed a job's
/// outcome over and wait for the next, once per process: the node gives
/// back there what the thread freed (its allocator keeps that with the
/// thread; after a burst, 2-4 MiB of a node's RSS).
pub fn set_idle_hook(hook: fn()) {
    let _ = IDLE_HOOK.set(hook);
}

/// Begins a transaction without durability and applies the job to it.
fn apply_job(job: Job) -> Result<WriteTransaction, Error> {
    let mut txn = job.db.begin_write().map_err(fail("begin write"))?;
    txn.set_durability(Durability::None).map_err(fail("begin write"))?;
    apply_commit(&txn, &job.payload, job.number)?;
    #[cfg(test)]
    match job.fault {
        Some(Fault::Error) => return Err(Error::storage(std::io::Error::other("an apply made to fail"))),
        Some(Fault::Panic) => panic!("an apply made to panic"),
        None => {}
    }
    Ok(txn)
}
