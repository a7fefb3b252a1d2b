//! Per-sender allowances in one-second windows, fixed in size whatever the
//! number of senders (sans-IO).
//!
//! The first [`TRACKED_SENDERS`] senders of a window are counted exactly,
//! each against its own allowance, so one sender that floods spends only
//! its own and never a neighbour's by chance. Senders past those share one
//! allowance: a flood from many (forged) senders can spend that, but never
//! the tracked senders' allowances, and never more than the budget's total.

use std::time::{Duration, Instant};

/// Senders counted one by one within a window.
pub const TRACKED_SENDERS: usize = 16;

/// Length of a window.
const WINDOW: Duration = Duration::from_secs(1);

/// Where an allowance is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// The tracked sender at this index.
    Own(usize),
    /// The allowance the untracked senders share.
    Shared,
}

/// Allowances for senders identified by `K` (an address, a node key).
pub struct SenderBudget<K> {
    per_sender: u16,
    shared: u16,
    window_start: Option<Instant>,
    /// This window's tracked senders and what each has spent. Empty, with
    /// no allocation, until a pod is first asked: a quiet pod holds none.
    senders: Vec<(K, u16)>,
    shared_spent: u16,
}

impl<K: Copy + Eq> SenderBudget<K> {
    /// A budget of `per_sender` a window for each tracked sender, and
    /// `shared` a window for every other sender together.
    pub fn new(per_sender: u16, shared: u16) -> Self {
        Self {
            per_sender,
            shared,
            window_start: None,
            senders: Vec::new(),
            shared_spent: 0,
        }
    }

    /// The allowance `sender` may spend at `now`, if any is left. A new
    /// window starts once one has passed.
    pub fn available(&mut self, sender: K, now: Instant) -> Option<Allowance> {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            self.window_start = Some(now);
            self.senders.clear();
            self.shared_spent = 0;
        }
        if let Some(index) = self.senders.iter().position(|(k, _)| *k == sender) {
            let (_, spent) = self.senders[index];
            return (spent < self.per_sender).then_some(Allowance::Own(index));
        }
        if self.senders.len() < TRACKED_SENDERS {
            self.senders.push((sender, 0));
            return (self.per_sender > 0).then_some(Allowance::Own(self.senders.len() - 1));
        }
        (self.shared_spent < self.shared).then_some(Allowance::Shared)
    }

    /// Spends one from an allowance [`Self::available`] gave.
    pub fn spend(&mut self, allowance: Allowance) {
        match allowance {
            Allowance::Own(index) => {
                if let Some((_, spent)) = self.senders.get_mut(index) {
                    *spent = spent.saturating_add(1);
                }
            }
            Allowance::Shared => self.shared_spent = self.shared_spent.saturating_add(1),
        }
    }

    /// The most a window can spend over every sender.
    #[cfg(test)]
    pub fn window_total(&self) -> usize {
        TRACKED_SENDERS * usize::from(self.per_sender) + usize::from(self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spends from `sender` until refused (at most 1,000 times): how many.
    fn spend_all(budget: &mut SenderBudget<u32>, sender: u32, now: Instant) -> usize {
        let mut spent = 0;
        while let Some(allowance) = budget.available(sender, now) {
            budget.spend(allowance);
            spent += 1;
            assert!(spent <= 1000, "the budget never ran out");
        }
        spent
    }

    #[test]
    fn a_sender_spends_only_its_own_allowance() {
        let mut budget = SenderBudget::new(3, 5);
        let now = Instant::now();
        assert_eq!(spend_all(&mut budget, 1, now), 3);
        assert_eq!(spend_all(&mut budget, 2, now), 3);
        // Asking again does not refill.
        assert_eq!(budget.available(1, now), None);
    }

    #[test]
    fn senders_past_the_tracked_ones_share_one_allowance() {
        let mut budget = SenderBudget::new(2, 5);
        let now = Instant::now();
        let tracked = u32::try_from(TRACKED_SENDERS).expect("small");
        let mut total = 0;
        for sender in 0..tracked + 20 {
            total += spend_all(&mut budget, sender, now);
        }
        assert_eq!(total, budget.window_total());
        assert_eq!(total, TRACKED_SENDERS * 2 + 5);
        // A tracked sender still has nothing left, the shared pool neither.
        assert_eq!(budget.available(0, now), None);
        assert_eq!(budget.available(tracked + 100, now), None);
    }

    #[test]
    fn a_new_window_restores_every_allowance() {
        let mut budget = SenderBudget::new(2, 1);
        let now = Instant::now();
        assert_eq!(spend_all(&mut budget, 7, now), 2);
        assert_eq!(budget.available(7, now + Duration::from_millis(999)), None);
        assert_eq!(spend_all(&mut budget, 7, now + WINDOW), 2);
    }

    #[test]
    fn a_zero_allowance_gives_nothing() {
        let mut budget = SenderBudget::new(0, 0);
        assert_eq!(budget.available(1, Instant::now()), None);
    }
}
