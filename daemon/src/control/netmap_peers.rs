//! A netmap's peers by node id, as a persistent map: a copy shares all of
//! the original, and a change copies only the chunk it touches and the
//! spine of chunk pointers. So a control session publishes its netmap on
//! every change without copying thousands of peers, and what changed
//! between two snapshots costs the changed chunks plus one pointer
//! comparison per chunk, not one per peer.
//!
//! The peers sit in chunks of consecutive node ids (never empty) behind
//! one shared spine. A chunk two snapshots both point to holds the same
//! peers in both: chunks are changed in place only while nothing else
//! holds them.

use std::fmt;
use std::ops::Index;
use std::sync::Arc;

use crate::control::tailcfg::Node;

/// Peers per chunk when built whole; a chunk splits past twice that and
/// joins a neighbour below a quarter of it.
const CHUNK: usize = 64;

type Entry = (i64, Arc<Node>);
type Chunk = Arc<Vec<Entry>>;

/// Peers by node id; cheap to clone.
#[derive(Clone, Default)]
pub struct PeerMap {
    /// Sorted by id, no chunk empty.
    chunks: Arc<Vec<Chunk>>,
    len: usize,
}

/// One peer that differs between two snapshots: joined (`old` is
/// `None`), left (`new` is `None`) or holds another record.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerChanged<'a> {
    pub id: i64,
    pub old: Option<&'a Arc<Node>>,
    pub new: Option<&'a Arc<Node>>,
}

impl PeerMap {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the map's own structure (spine and chunks, not the shared
    /// records).
    pub fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk>()
            + self
                .chunks
                .iter()
                .map(|c| c.capacity() * std::mem::size_of::<Entry>())
                .sum::<usize>()
    }

    /// From entries sorted by id without repeats.
    fn from_sorted(entries: Vec<Entry>) -> Self {
        let len = entries.len();
        let chunks = entries
            .chunks(CHUNK)
            .map(|part| Arc::new(part.to_vec()))
            .collect();
        Self {
            chunks: Arc::new(chunks),
            len,
        }
    }

    /// The chunk that holds `id` or would take it; `None` when empty.
    fn chunk_for(&self, id: i64) -> Option<usize> {
        let last = self.chunks.len().checked_sub(1)?;
        let at = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|(last_id, _)| *last_id < id));
        Some(at.min(last))
    }

    pub fn get(&self, id: &i64) -> Option<&Arc<Node>> {
        let chunk = &self.chunks[self.chunk_for(*id)?];
        let at = chunk.binary_search_by_key(id, |(k, _)| *k).ok()?;
        Some(&chunk[at].1)
    }

    pub fn contains_key(&self, id: &i64) -> bool {
        self.get(id).is_some()
    }

    /// Sets the peer with `id`; returns its previous record.
    pub fn insert(&mut self, id: i64, node: Arc<Node>) -> Option<Arc<Node>> {
        if let Some(held) = self.get(&id).filter(|held| Arc::ptr_eq(held, &node)) {
            // Unchanged: nothing shared is copied.
            return Some(held.clone());
        }
        let Some(at) = self.chunk_for(id) else {
            self.chunks = Arc::new(vec![Arc::new(vec![(id, node)])]);
            self.len = 1;
            return None;
        };
        let spine = Arc::make_mut(&mut self.chunks);
        let chunk = Arc::make_mut(&mut spine[at]);
        match chunk.binary_search_by_key(&id, |(k, _)| *k) {
            Ok(i) => return Some(std::mem::replace(&mut chunk[i].1, node)),
            Err(i) => chunk.insert(i, (id, node)),
        }
        self.len += 1;
        if chunk.len() > 2 * CHUNK {
            let tail = chunk.split_off(chunk.len() / 2);
            spine.insert(at + 1, Arc::new(tail));
        }
        None
    }

    /// Removes the peer with `id`; returns its record.
    pub fn remove(&mut self, id: &i64) -> Option<Arc<Node>> {
        let at = self.chunk_for(*id)?;
        let i = self.chunks[at].binary_search_by_key(id, |(k, _)| *k).ok()?;
        let spine = Arc::make_mut(&mut self.chunks);
        let chunk = Arc::make_mut(&mut spine[at]);
        let (_, removed) = chunk.remove(i);
        self.len -= 1;
        if chunk.is_empty() {
            spine.remove(at);
        } else if chunk.len() < CHUNK / 4 && spine.len() > 1 {
            // Joined with a neighbour so that many removals do not leave
            // a spine of tiny chunks.
            let left = if at + 1 < spine.len() { at } else { at - 1 };
            let right = spine.remove(left + 1);
            let joined = Arc::make_mut(&mut spine[left]);
            joined.extend(right.iter().cloned());
            if joined.len() > 2 * CHUNK {
                let tail = joined.split_off(joined.len() / 2);
                spine.insert(left + 1, Arc::new(tail));
            }
        }
        Some(removed)
    }

    /// Every peer, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&i64, &Arc<Node>)> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .map(|(id, node)| (id, node))
    }

    pub fn keys(&self) -> Keys<'_> {
        Keys(Cursor::new(&self.chunks))
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<Node>> + '_ {
        self.iter().map(|(_, node)| node)
    }

    /// Makes the map hold exactly `fresh`'s peers, keeping what did not
    /// change shared with earlier snapshots (a full peer list from
    /// control is mostly the peers the map already has).
    pub fn replace_with(&mut self, fresh: PeerMap) {
        let changes: Vec<(i64, Option<Arc<Node>>)> = fresh
            .changes_from(self)
            .into_iter()
            .map(|c| (c.id, c.new.cloned()))
            .collect();
        // Past a few, applying them one by one costs more than the copy
        // of every chunk it would save.
        if changes.len() > self.len / 8 {
            *self = fresh;
            return;
        }
        for (id, node) in changes {
            match node {
                Some(node) => self.insert(id, node),
                None => self.remove(&id),
            };
        }
    }

    /// The peers that differ from `old` to `self`, by id: chunks both
    /// share are skipped with one pointer comparison.
    pub fn changes_from<'a>(&'a self, old: &'a PeerMap) -> Vec<PeerChanged<'a>> {
        let mut changes = Vec::new();
        if Arc::ptr_eq(&self.chunks, &old.chunks) {
            return changes;
        }
        let mut before = Cursor::new(&old.chunks);
        let mut after = Cursor::new(&self.chunks);
        loop {
            if before.shares_chunk_with(&after) {
                before.skip_chunk();
                after.skip_chunk();
                continue;
            }
            match (before.peek(), after.peek()) {
                (None, None) => return changes,
                (Some(o), Some(n)) if o.0 == n.0 => {
                    if !Arc::ptr_eq(&o.1, &n.1) {
                        changes.push(PeerChanged {
                            id: o.0,
                            old: Some(&o.1),
                            new: Some(&n.1),
                        });
                    }
                    before.advance();
                    after.advance();
                }
                (Some(o), Some(n)) if n.0 < o.0 => {
                    changes.push(PeerChanged {
                        id: n.0,
                        old: None,
                        new: Some(&n.1),
                    });
                    after.advance();
                }
                (None, Some(n)) => {
                    changes.push(PeerChanged {
                        id: n.0,
                        old: None,
                        new: Some(&n.1),
                    });
                    after.advance();
                }
                (Some(o), _) => {
                    changes.push(PeerChanged {
                        id: o.0,
                        old: Some(&o.1),
                        new: None,
                    });
                    before.advance();
                }
            }
        }
    }
}

/// The ids of a [`PeerMap`], in order.
#[derive(Clone)]
pub struct Keys<'a>(Cursor<'a>);

impl<'a> Iterator for Keys<'a> {
    type Item = &'a i64;

    fn next(&mut self) -> Option<&'a i64> {
        let (id, _) = self.0.peek()?;
        self.0.advance();
        Some(id)
    }
}

impl fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

/// A position in a map's chunks.
#[derive(Clone)]
struct Cursor<'a> {
    chunks: &'a [Chunk],
    chunk: usize,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(chunks: &'a [Chunk]) -> Self {
        Self {
            chunks,
            chunk: 0,
            at: 0,
        }
    }

    fn peek(&self) -> Option<&'a Entry> {
        self.chunks.get(self.chunk)?.get(self.at)
    }

    fn advance(&mut self) {
        self.at += 1;
        if self
            .chunks
            .get(self.chunk)
            .is_none_or(|c| self.at >= c.len())
        {
            self.chunk += 1;
            self.at = 0;
        }
    }

    /// Whether both stand at the start of one shared chunk.
    fn shares_chunk_with(&self, other: &Cursor<'_>) -> bool {
        self.at == 0
            && other.at == 0
            && match (self.chunks.get(self.chunk), other.chunks.get(other.chunk)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }

    fn skip_chunk(&mut self) {
        self.chunk += 1;
        self.at = 0;
    }
}

impl FromIterator<(i64, Arc<Node>)> for PeerMap {
    /// Of two entries with one id the later stays, as in a `BTreeMap`.
    fn from_iter<I: IntoIterator<Item = (i64, Arc<Node>)>>(iter: I) -> Self {
        let mut entries: Vec<Entry> = iter.into_iter().collect();
        // Stable: entries of one id stay in the order given.
        entries.sort_by_key(|(id, _)| *id);
        let mut sorted: Vec<Entry> = Vec::with_capacity(entries.len());
        for entry in entries {
            match sorted.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => sorted.push(entry),
            }
        }
        Self::from_sorted(sorted)
    }
}

impl Index<&i64> for PeerMap {
    type Output = Arc<Node>;

    /// Panics without a peer `id`, as a `BTreeMap` does.
    fn index(&self, id: &i64) -> &Arc<Node> {
        match self.get(id) {
            Some(node) => node,
            None => panic!("no peer with id {id}"),
        }
    }
}

impl PartialEq for PeerMap {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl fmt::Debug for PeerMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
#[path = "netmap_peers_tests.rs"]
mod tests;
