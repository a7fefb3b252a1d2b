//! Per-pod locking: operations on one container are serialised, operations
//! on different containers never wait for each other.
//!
//! The registry's own mutex is held only to look up or insert an entry, never
//! across an await, so a slow registration of one pod cannot delay another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Debug, Default)]
pub struct PodLocks {
    slots: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Held for the duration of one operation on one container.
#[derive(Debug)]
pub struct PodGuard {
    _guard: OwnedMutexGuard<()>,
}

impl PodLocks {
    /// The container's lock, created on first use.
    fn slot(&self, container_id: &str) -> Arc<AsyncMutex<()>> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .entry(container_id.to_string())
            .or_insert_with(|| Arc::new(AsyncMutex::new(())))
            .clone()
    }

    pub async fn lock(&self, container_id: &str) -> PodGuard {
        let slot = self.slot(container_id);
        PodGuard {
            _guard: slot.lock_owned().await,
        }
    }

    /// The lock if nobody holds it now; `None` while an operation on the
    /// container is in progress (background reconcile skips such pods).
    pub fn try_lock(&self, container_id: &str) -> Option<PodGuard> {
        let slot = self.slot(container_id);
        slot.try_lock_owned()
            .ok()
            .map(|guard| PodGuard { _guard: guard })
    }

    /// Drops entries nobody holds or waits for, so the map does not grow with
    /// every container the node ever ran.
    pub fn prune(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.retain(|_, slot| Arc::strong_count(slot) > 1);
    }

    pub fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn different_pods_do_not_wait_for_each_other() {
        let locks = PodLocks::default();
        let _a = locks.lock("a").await;
        // Would hang (and hit the timeout) if "b" shared "a"'s lock.
        let b = tokio::time::timeout(Duration::from_secs(1), locks.lock("b")).await;
        assert!(b.is_ok());
    }

    #[tokio::test]
    async fn the_same_pod_is_serialised() {
        let locks = Arc::new(PodLocks::default());
        let first = locks.lock("a").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _second = locks.lock("a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "second lock of the same pod did not wait"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("waiter finishes once the first guard is dropped")
            .unwrap();
    }

    #[tokio::test]
    async fn try_lock_fails_only_while_held() {
        let locks = PodLocks::default();
        let held = locks.lock("a").await;
        assert!(locks.try_lock("a").is_none());
        assert!(locks.try_lock("b").is_some());
        drop(held);
        assert!(locks.try_lock("a").is_some());
    }

    #[tokio::test]
    async fn prune_keeps_held_entries_only() {
        let locks = PodLocks::default();
        let held = locks.lock("a").await;
        drop(locks.lock("b").await);
        locks.prune();
        assert_eq!(locks.len(), 1);
        drop(held);
        locks.prune();
        assert!(locks.is_empty());
    }
}
