//! Dumps of the host's links, rules and routes, shared by the pods that
//! wait for them.
//!
//! The kernel runs one dump per netlink socket at a time (a second gets
//! EBUSY), so concurrent pods take turns. A pod only needs a dump that began
//! after it asked: when fifty pods start at once, the first dump to begin
//! after they asked serves all of them instead of each queueing for its own.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rtnetlink::IpVersion;

use crate::podmgr::nl::{LinkInfoView, RouteView, RuleView};

/// The host dumps of one netlink socket, one kind at a time.
#[derive(Debug, Default)]
pub(super) struct HostDumps {
    turn: tokio::sync::Mutex<()>,
    links: SharedDump<LinkInfoView>,
    rules_v4: SharedDump<RuleView>,
    rules_v6: SharedDump<RuleView>,
    routes_v4: SharedDump<RouteView>,
    routes_v6: SharedDump<RouteView>,
}

impl HostDumps {
    pub(super) fn links(&self) -> &SharedDump<LinkInfoView> {
        &self.links
    }

    pub(super) fn rules(&self, version: &IpVersion) -> &SharedDump<RuleView> {
        match version {
            IpVersion::V4 => &self.rules_v4,
            IpVersion::V6 => &self.rules_v6,
        }
    }

    pub(super) fn routes(&self, version: &IpVersion) -> &SharedDump<RouteView> {
        match version {
            IpVersion::V4 => &self.routes_v4,
            IpVersion::V6 => &self.routes_v6,
        }
    }

    /// The items of a dump of `kind` that began after this call: the last
    /// one taken if it did, else a new one taken by `dump`.
    pub(super) async fn take<T, E, F, Fut>(
        &self,
        kind: &SharedDump<T>,
        dump: F,
    ) -> Result<Arc<Vec<T>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<T>, E>>,
    {
        let ticket = kind.asked.fetch_add(1, Ordering::SeqCst);
        let _turn = self.turn.lock().await;
        if let Some(items) = kind.taken_after(ticket) {
            return Ok(items);
        }
        // Every request numbered below this was made before the dump begins.
        let serves_below = kind.asked.load(Ordering::SeqCst);
        let items = Arc::new(dump().await?);
        kind.keep(serves_below, Arc::clone(&items));
        Ok(items)
    }
}

/// The last dump of one kind and the requests it answers.
#[derive(Debug)]
pub(super) struct SharedDump<T> {
    /// Requests numbered so far.
    asked: AtomicU64,
    last: Mutex<Option<Taken<T>>>,
}

impl<T> Default for SharedDump<T> {
    fn default() -> Self {
        Self {
            asked: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }
}

#[derive(Debug)]
struct Taken<T> {
    serves_below: u64,
    items: Arc<Vec<T>>,
}

impl<T> SharedDump<T> {
    fn taken_after(&self, ticket: u64) -> Option<Arc<Vec<T>>> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref()
            .filter(|taken| taken.serves_below > ticket)
            .map(|taken| Arc::clone(&taken.items))
    }

    fn keep(&self, serves_below: u64, items: Arc<Vec<T>>) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Taken {
            serves_below,
            items,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[derive(Default)]
    struct Numbers {
        dumps: HostDumps,
        kind: SharedDump<usize>,
        taken: AtomicUsize,
    }

    impl Numbers {
        /// Each dump answers with how many dumps came before it.
        async fn take(&self) -> Arc<Vec<usize>> {
            self.dumps
                .take(&self.kind, || async {
                    Ok::<_, Infallible>(vec![self.taken.fetch_add(1, Ordering::SeqCst)])
                })
                .await
                .unwrap_or_else(|never| match never {})
        }
    }

    #[tokio::test]
    async fn requests_waiting_while_a_dump_runs_share_the_next_one() {
        let numbers = Arc::new(Numbers::default());
        // Hold the turn so that every request below queues behind it.
        let held = numbers.dumps.turn.lock().await;
        let waiting: Vec<_> = (0..20)
            .map(|_| {
                let numbers = Arc::clone(&numbers);
                tokio::spawn(async move { numbers.take().await })
            })
            .collect();
        while numbers.kind.asked.load(Ordering::SeqCst) < 20 {
            tokio::task::yield_now().await;
        }
        drop(held);
        for request in waiting {
            let items = request.await.expect("request task");
            assert_eq!(*items, vec![0], "every request got the first dump");
        }
        assert_eq!(numbers.taken.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_made_after_a_dump_gets_a_new_one() {
        let numbers = Numbers::default();
        let first = numbers.take().await;
        let second = numbers.take().await;
        assert_eq!((first.to_vec(), second.to_vec()), (vec![0], vec![1]));
    }

    #[tokio::test]
    async fn a_failed_dump_is_not_kept() {
        let dumps = HostDumps::default();
        let kind = SharedDump::<u8>::default();
        let failed = dumps.take(&kind, || async { Err("busy") }).await;
        assert_eq!(failed, Err("busy"));
        let retried = dumps.take(&kind, || async { Ok::<_, &str>(vec![7]) }).await;
        assert_eq!(retried.map(|items| items.to_vec()), Ok(vec![7]));
    }

    #[tokio::test]
    async fn kinds_are_answered_by_their_own_dumps() {
        let dumps = HostDumps::default();
        dumps
            .take(dumps.rules(&IpVersion::V4), || async {
                Ok::<Vec<RuleView>, Infallible>(Vec::new())
            })
            .await
            .unwrap_or_else(|never| match never {});
        assert!(dumps.rules(&IpVersion::V4).taken_after(0).is_some());
        assert!(dumps.rules(&IpVersion::V6).taken_after(0).is_none());
        assert!(dumps.routes(&IpVersion::V4).taken_after(0).is_none());
    }
}
