//! The tailnet packet filter as one pod applies it: flows the pod opens
//! are noted on the way out, packets from peers are judged on the way in.
//!
//! After a restart a pod may enforce the rules it had before, remembered
//! on disk, until control sends its own; those remembered rules carry a
//! deadline, past which the pod is closed inbound (deny-all, replies to its
//! own flows still pass) however late control is.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tailnet_wire::filter::{CompiledRules, ConntrackConfig, DropReason, Filter, Verdict};
use tailnet_wire::packet::Packet as IpPacket;
use tokio::time::Instant;
use tracing::info;

/// How often expired flows are swept from a pod's connection-tracking table
/// (lookups ignore expired flows anyway; this only reclaims memory).
const FILTER_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The pod's packet filter and when its flows were last swept.
pub(super) struct PodFilter {
    /// `None` until rules are set: nothing is filtered before that.
    filter: Option<Filter>,
    /// Set while the rules are remembered ones: when they stop counting.
    remembered_until: Option<Instant>,
    last_sweep: Instant,
}

impl Default for PodFilter {
    fn default() -> Self {
        Self {
            filter: None,
            remembered_until: None,
            last_sweep: Instant::now(),
        }
    }
}

impl PodFilter {
    /// Swap in control's rules, keeping tracked flows; the first call
    /// creates the filter for the pod's `addresses`. Ends remembered rules.
    pub(super) fn set_rules(&mut self, rules: Arc<CompiledRules>, addresses: &[IpAddr]) {
        self.remembered_until = None;
        self.install(rules, addresses);
    }

    /// Enforce rules remembered from before a restart until `until` at the
    /// latest, then deny-all until control's rules arrive.
    pub(super) fn set_remembered_rules(
        &mut self,
        rules: Arc<CompiledRules>,
        addresses: &[IpAddr],
        until: Instant,
    ) {
        self.install(rules, addresses);
        self.remembered_until = Some(until);
    }

    /// Closes the pod once its remembered rules are past their deadline.
    fn expire_remembered(&mut self) {
        let Some(until) = self.remembered_until else {
            return;
        };
        if Instant::now() < until {
            return;
        }
        self.remembered_until = None;
        if let Some(filter) = &mut self.filter {
            filter.set_rules(Arc::new(CompiledRules::deny_all()));
            info!("remembered packet filter expired before control sent one; inbound closed");
        }
    }

    fn install(&mut self, rules: Arc<CompiledRules>, addresses: &[IpAddr]) {
        match &mut self.filter {
            Some(filter) => filter.set_rules(rules),
            None => {
                self.filter = Some(Filter::new(
                    rules,
                    addresses.iter().copied(),
                    ConntrackConfig::default(),
                ))
            }
        }
    }

    /// Remember a flow the pod opens so its replies are let in.
    pub(super) fn note_outbound(&mut self, packet: &[u8]) {
        if let Some(filter) = &mut self.filter {
            if let Ok(parsed) = IpPacket::parse(packet) {
                filter.note_outbound(&parsed, std::time::Instant::now());
            }
        }
    }

    /// Whether a packet from a peer may enter the pod.
    pub(super) fn check_inbound(&mut self, packet: &[u8]) -> Result<(), DropReason> {
        self.expire_remembered();
        let Some(filter) = &mut self.filter else {
            return Ok(());
        };
        let verdict = match IpPacket::parse(packet) {
            Ok(parsed) => filter.check_inbound(&parsed, std::time::Instant::now()),
            // Unparseable headers cannot be judged: refuse them.
            Err(_) => Verdict::Drop(DropReason::NoRuleMatched),
        };
        match verdict {
            Verdict::Drop(reason) => Err(reason),
            Verdict::Accept => Ok(()),
        }
    }

    /// When the next sweep is due: only while flows are tracked.
    pub(super) fn sweep_deadline(&self) -> Option<Instant> {
        let tracked = self.filter.as_ref()?.state().tracked_flows();
        (tracked > 0).then(|| self.last_sweep + FILTER_SWEEP_INTERVAL)
    }

    /// Timer: reclaim the memory of expired flows now and then.
    pub(super) fn sweep_if_due(&mut self) {
        if let Some(filter) = &mut self.filter {
            if self.last_sweep.elapsed() >= FILTER_SWEEP_INTERVAL {
                self.last_sweep = Instant::now();
                filter.state_mut().sweep_expired(std::time::Instant::now());
            }
        }
    }
}
