//! Allocation of per-pod routing table numbers.
//!
//! The allocator only bookkeeps numbers; its mutex is held for a set lookup,
//! never across netlink calls, so pods set up in parallel do not wait on each
//! other.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

/// First table number used for pods. Far above the numbers distributions and
/// tailscaled use (52, 253..255) and below the reserved 0xffff_ffff.
pub const DEFAULT_TABLE_BASE: u32 = 0x7c00_0000;
/// How many pod tables the default range holds.
pub const DEFAULT_TABLE_COUNT: u32 = 0x0001_0000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("all {count} routing tables from {base:#x} are in use")]
    Exhausted { base: u32, count: u32 },
    #[error("table range starting at {base:#x} with {count} tables is empty or overflows u32")]
    InvalidRange { base: u32, count: u32 },
}

#[derive(Debug)]
pub struct TableAllocator {
    base: u32,
    count: u32,
    state: Mutex<AllocState>,
}

#[derive(Debug, Default)]
struct AllocState {
    in_use: BTreeSet<u32>,
    /// Where the next search starts: numbers are handed out round-robin so a
    /// just-released table is not reused at once (its leftovers, if a
    /// teardown failed, would otherwise meet the next pod).
    cursor: u32,
}

impl TableAllocator {
    /// `in_use`: tables of pods loaded from state. Numbers outside the range
    /// are ignored.
    pub fn new(
        base: u32,
        count: u32,
        in_use: impl IntoIterator<Item = u32>,
    ) -> Result<Self, TableError> {
        if count == 0 || base.checked_add(count - 1).is_none() {
            return Err(TableError::InvalidRange { base, count });
        }
        let allocator = Self {
            base,
            count,
            state: Mutex::new(AllocState::default()),
        };
        for table in in_use {
            allocator.reserve(table);
        }
        Ok(allocator)
    }

    pub fn with_default_range(in_use: impl IntoIterator<Item = u32>) -> Self {
        Self {
            base: DEFAULT_TABLE_BASE,
            count: DEFAULT_TABLE_COUNT,
            state: Mutex::new(AllocState {
                in_use: in_use
                    .into_iter()
                    .filter(|t| {
                        (DEFAULT_TABLE_BASE..DEFAULT_TABLE_BASE + DEFAULT_TABLE_COUNT).contains(t)
                    })
                    .collect(),
                cursor: 0,
            }),
        }
    }

    pub fn contains(&self, table: u32) -> bool {
        table >= self.base && table - self.base < self.count
    }

    /// Marks a table as used (e.g. one found in a loaded record). Returns
    /// false when it was already taken or lies outside the range.
    pub fn reserve(&self, table: u32) -> bool {
        if !self.contains(table) {
            return false;
        }
        self.lock().in_use.insert(table)
    }

    /// Picks a free table number and marks it used.
    pub fn allocate(&self) -> Result<u32, TableError> {
        let mut state = self.lock();
        if state.in_use.len() as u64 >= u64::from(self.count) {
            return Err(TableError::Exhausted {
                base: self.base,
                count: self.count,
            });
        }
        for step in 0..self.count {
            let offset = (state.cursor.wrapping_add(step)) % self.count;
            let table = self.base + offset;
            if state.in_use.insert(table) {
                state.cursor = (offset + 1) % self.count;
                return Ok(table);
            }
        }
        Err(TableError::Exhausted {
            base: self.base,
            count: self.count,
        })
    }

    /// Returns a table to the pool. Returns false if it was not allocated.
    pub fn release(&self, table: u32) -> bool {
        self.lock().in_use.remove(&table)
    }

    pub fn in_use(&self) -> Vec<u32> {
        self.lock().in_use.iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AllocState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn skips_tables_in_use() {
        let alloc = TableAllocator::new(100, 4, [100, 102]).unwrap();
        assert_eq!(alloc.allocate(), Ok(101));
        assert_eq!(alloc.allocate(), Ok(103));
        assert_eq!(
            alloc.allocate(),
            Err(TableError::Exhausted {
                base: 100,
                count: 4
            })
        );
    }

    #[test]
    fn released_tables_are_reused_only_after_the_others() {
        let alloc = TableAllocator::new(10, 3, []).unwrap();
        assert_eq!(alloc.allocate(), Ok(10));
        assert!(alloc.release(10));
        assert!(!alloc.release(10));
        assert_eq!(alloc.allocate(), Ok(11));
        assert_eq!(alloc.allocate(), Ok(12));
        assert_eq!(alloc.allocate(), Ok(10));
    }

    #[test]
    fn reserve_ignores_numbers_outside_the_range() {
        let alloc = TableAllocator::new(10, 2, [5, 11, 99]).unwrap();
        assert_eq!(alloc.in_use(), vec![11]);
        assert!(!alloc.reserve(11));
        assert!(alloc.reserve(10));
        assert!(alloc.allocate().is_err());
    }

    #[test]
    fn rejects_empty_or_overflowing_ranges() {
        assert!(TableAllocator::new(1, 0, []).is_err());
        assert!(TableAllocator::new(u32::MAX, 2, []).is_err());
        assert!(TableAllocator::new(u32::MAX, 1, []).is_ok());
    }

    #[test]
    fn default_range_starts_at_the_documented_base() {
        let alloc = TableAllocator::with_default_range([DEFAULT_TABLE_BASE, 7]);
        assert_eq!(alloc.allocate(), Ok(DEFAULT_TABLE_BASE + 1));
        assert_eq!(
            alloc.in_use(),
            vec![DEFAULT_TABLE_BASE, DEFAULT_TABLE_BASE + 1]
        );
    }

    #[test]
    fn parallel_allocations_are_distinct() {
        let alloc = Arc::new(TableAllocator::new(1000, 64, []).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let alloc = alloc.clone();
                std::thread::spawn(move || {
                    (0..8)
                        .map(|_| alloc.allocate().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let distinct: HashSet<u32> = all.iter().copied().collect();
        assert_eq!(all.len(), 64);
        assert_eq!(distinct.len(), 64);
        assert!(alloc.allocate().is_err());
    }
}
