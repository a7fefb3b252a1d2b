//! The warm identity pool: identities minted, registered and holding a
//! netmap ahead of demand, per tag set, so that an ADD binds one instead of
//! waiting for control.
//!
//! This module keeps the pool's books (what is ready, what is being
//! filled, what must be retired, whether ADDs are in flight); the pod
//! manager (`manager/pool.rs`) registers, binds and retires identities.
//!
//! An idle pooled identity is an ordinary node of the tailnet, tagged as
//! the pods it is kept for and named `{cluster}-pool-{8 hex}`; its keys live
//! in `<state_dir>/pool/<id>.json` (0600, in a 0700 directory) and stay
//! there once a pod binds it: the pod's record names that file.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{watch, Notify};

use super::hostname::pod_hostname;
use super::manager::seams::PodSession;
use crate::control::{IdentityKeys, SessionState};
use crate::wg::WarmRelay;

/// The directory under the state dir that holds pooled identities' keys.
const POOL_DIR: &str = "pool";
const KEY_SUFFIX: &str = ".json";

/// A pod's tags as the pool files them: sorted, without repeats.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TagSet(Vec<String>);

impl TagSet {
    pub fn of(tags: &[String]) -> Self {
        let mut tags = tags.to_vec();
        tags.sort();
        tags.dedup();
        Self(tags)
    }

    pub fn tags(&self) -> &[String] {
        &self.0
    }
}

/// One registered identity waiting for a pod.
pub struct Pooled<S> {
    pub keys: IdentityKeys,
    /// Where its keys are, and stay once a pod binds it.
    pub key_file: PathBuf,
    /// The name it registered with.
    pub hostname: String,
    pub session: S,
    /// Its home relay, kept connected so the ADD that binds it does not
    /// wait for one.
    pub relay: Option<WarmRelay>,
}

/// A new pooled identity's name and key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub hostname: String,
    pub key_file: PathBuf,
}

struct Set<S> {
    ready: VecDeque<Pooled<S>>,
    /// Registrations under way for this set.
    filling: usize,
}

impl<S> Default for Set<S> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            filling: 0,
        }
    }
}

struct Books<S> {
    sets: BTreeMap<TagSet, Set<S>>,
    /// Taken out of service (unhealthy, or over size): to be logged out.
    retiring: Vec<Pooled<S>>,
    closed: bool,
}

/// The pool's books, shared by ADDs and the task that fills the pool.
pub struct IdentityPool<S> {
    size: usize,
    cluster: String,
    dir: PathBuf,
    books: Mutex<Books<S>>,
    /// ADDs being served; the pool fills only when none is.
    adds: watch::Sender<usize>,
    /// Wakes the filling task: a set fell below its size, or it is closing.
    wake: Arc<Notify>,
}

impl<S: PodSession> IdentityPool<S> {
    /// A pool of `size` identities per tag set (0: off), filled from the
    /// start for `warm` tag sets. Creates `<state_dir>/pool` (0700) when on.
    pub fn open(
        state_dir: &Path,
        cluster: &str,
        size: usize,
        warm: &[Vec<String>],
    ) -> io::Result<Self> {
        let dir = state_dir.join(POOL_DIR);
        if size > 0 {
            DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let sets = if size > 0 {
            warm.iter()
                .map(|tags| (TagSet::of(tags), Set::default()))
                .collect()
        } else {
            BTreeMap::new()
        };
        Ok(Self {
            size,
            cluster: cluster.to_string(),
            dir,
            books: Mutex::new(Books {
                sets,
                retiring: Vec::new(),
                closed: false,
            }),
            adds: watch::Sender::new(0),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Whether the pool keeps any identity.
    pub fn is_on(&self) -> bool {
        self.size > 0
    }

    fn books(&self) -> MutexGuard<'_, Books<S>> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ready identity for `tags`, if one is. Identities whose session is
    /// no longer registered and connected are set aside for retirement.
    /// The set is kept filled from now on.
    pub fn take(&self, tags: &TagSet) -> Option<Pooled<S>> {
        if !self.is_on() {
            return None;
        }
        let taken = {
            let mut books = self.books();
            if books.closed {
                return None;
            }
            let Books { sets, retiring, .. } = &mut *books;
            let set = sets.entry(tags.clone()).or_default();
            let mut taken = None;
            while let Some(pooled) = set.ready.pop_front() {
                if serves(&pooled.session) {
                    taken = Some(pooled);
                    break;
                }
                retiring.push(pooled);
            }
            taken
        };
        self.wake.notify_one();
        taken
    }

    /// Sets `pooled` aside for retirement and wakes the filling task.
    pub fn set_aside(&self, pooled: Pooled<S>) {
        self.books().retiring.push(pooled);
        self.wake.notify_one();
    }

    /// One tag set per identity to register now, each counted as being
    /// filled until [`Self::filled`].
    pub fn claim_missing(&self) -> Vec<TagSet> {
        let mut books = self.books();
        if books.closed {
            return Vec::new();
        }
        let mut missing = Vec::new();
        for (tags, set) in &mut books.sets {
            let have = set.ready.len() + set.filling;
            for _ in have..self.size {
                missing.push(tags.clone());
            }
            set.filling += self.size.saturating_sub(have);
        }
        missing
    }

    /// Ends one registration claimed for `tags`; a registered identity the
    /// pool cannot keep (closed, or full) is handed back to be retired.
    pub fn filled(&self, tags: &TagSet, pooled: Option<Pooled<S>>) -> Option<Pooled<S>> {
        let mut books = self.books();
        let closed = books.closed;
        let set = books.sets.entry(tags.clone()).or_default();
        set.filling = set.filling.saturating_sub(1);
        let pooled = pooled?;
        if closed || set.ready.len() >= self.size {
            return Some(pooled);
        }
        set.ready.push_back(pooled);
        None
    }

    /// Identities set aside since the last call.
    pub fn retiring(&self) -> Vec<Pooled<S>> {
        std::mem::take(&mut self.books().retiring)
    }

    /// Stops filling and hands back every identity held, to be retired.
    pub fn close(&self) -> Vec<Pooled<S>> {
        let drained = {
            let mut books = self.books();
            books.closed = true;
            let mut drained = std::mem::take(&mut books.retiring);
            for set in books.sets.values_mut() {
                drained.extend(set.ready.drain(..));
            }
            drained
        };
        self.wake.notify_one();
        drained
    }

    pub fn is_closed(&self) -> bool {
        self.books().closed
    }

    /// How many identities are ready for `tags`.
    pub fn ready(&self, tags: &TagSet) -> usize {
        self.books().sets.get(tags).map_or(0, |set| set.ready.len())
    }

    /// Counts an ADD as served until the guard drops.
    pub fn serving(&self) -> Serving<'_> {
        self.adds.send_modify(|n| *n += 1);
        Serving(&self.adds)
    }

    /// Returns once no ADD is being served.
    pub async fn adds_served(&self) {
        let mut adds = self.adds.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        adds.wait_for(|n| *n == 0).await.ok();
    }

    /// What the filling task waits on between passes.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// A fresh name and key file for a new pooled identity.
    pub fn new_slot(&self) -> Slot {
        let id = hex::encode(rand::random::<[u8; 8]>());
        self.slot_of(&id)
    }

    /// The name a pooled identity with key file id `id` registered with.
    fn slot_of(&self, id: &str) -> Slot {
        let short: String = id.chars().take(8).collect();
        Slot {
            hostname: pod_hostname(&self.cluster, POOL_DIR, &short),
            key_file: self.dir.join(format!("{id}{KEY_SUFFIX}")),
        }
    }

    /// Key files in the pool directory that `owned` (the pods' records)
    /// does not name: identities an earlier run left registered. Files an
    /// interrupted write left are removed.
    pub fn leftovers(&self, owned: &HashSet<PathBuf>) -> io::Result<Vec<Slot>> {
        if !self.is_on() && !self.dir.exists() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(id) = name.strip_suffix(KEY_SUFFIX) else {
                // A temporary file of an interrupted write: never used.
                std::fs::remove_file(&path)?;
                continue;
            };
            if owned.contains(&path) {
                continue;
            }
            found.push(self.slot_of(id));
        }
        Ok(found)
    }
}

/// Whether a pooled session can serve a pod now.
fn serves(session: &impl PodSession) -> bool {
    session.self_node().is_some() && *session.state().borrow() == SessionState::Connected
}

/// An ADD being served; see [`IdentityPool::serving`].
pub struct Serving<'a>(&'a watch::Sender<usize>);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}
