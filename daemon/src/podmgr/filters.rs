//! Netmap packet-filter rules → compiled engine rules, shared across pods.
//!
//! Control usually sends the same filter to many identities on a node (the
//! tailnet policy rarely singles out one pod), so a compiled rule set is held
//! once: [`FilterCache`] hands every pod that received identical rules the same
//! `Arc<CompiledRules>`, and forgets a set when the last pod drops it.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use tailnet_wire::filter::{CompiledRules, FilterParseError, FilterRule};
use tracing::warn;

use crate::control::tailcfg;

/// Converts control's rules to the engine's, skipping entries it cannot use
/// (Tailscale does the same, so one unknown entry does not cut a node off).
pub fn convert(rules: &[&tailcfg::FilterRule]) -> (Vec<FilterRule>, Vec<FilterParseError>) {
    let mut converted = Vec::with_capacity(rules.len());
    let mut errors = Vec::new();
    for rule in rules {
        let (parsed, errs) = FilterRule::parse_lenient(
            &rule.srcips,
            rule.dstports
                .iter()
                .map(|d| (d.ip.as_str(), d.ports.first, d.ports.last)),
            rule.ipproto.iter().copied(),
        );
        converted.push(parsed);
        errors.extend(errs);
    }
    (converted, errors)
}

struct Entry {
    rules: Vec<tailcfg::FilterRule>,
    compiled: Weak<CompiledRules>,
}

/// Interns compiled rule sets by the rules control sent.
#[derive(Default)]
pub struct FilterCache {
    sets: Mutex<HashMap<u64, Vec<Entry>>>,
}

impl FilterCache {
    /// The daemon's one cache (there is one engine per process too).
    pub fn global() -> &'static FilterCache {
        static CACHE: OnceLock<FilterCache> = OnceLock::new();
        CACHE.get_or_init(FilterCache::default)
    }

    /// The compiled form of `rules`, shared with every other caller that
    /// passed identical rules while it is alive. An empty list compiles to
    /// deny-all (replies to the pod's own flows still pass). Takes
    /// references so that a hit (the usual case: every netmap update asks)
    /// copies nothing.
    pub fn compile(&self, rules: &[&tailcfg::FilterRule]) -> Arc<CompiledRules> {
        let key = fingerprint(rules);
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = sets.entry(key).or_default();
        bucket.retain(|e| e.compiled.strong_count() > 0);
        if let Some(shared) = bucket
            .iter()
            .find(|e| e.rules.iter().eq(rules.iter().copied()))
            .and_then(|e| e.compiled.upgrade())
        {
            return shared;
        }
        let (converted, errors) = convert(rules);
        if let Some(first) = errors.first() {
            warn!(skipped = errors.len(), error = %first, "packet filter entries skipped");
        }
        let compiled = Arc::new(CompiledRules::new(&converted));
        bucket.push(Entry {
            rules: rules.iter().map(|r| (*r).clone()).collect(),
            compiled: Arc::downgrade(&compiled),
        });
        // Drop buckets whose sets every pod has let go of, now and then.
        if sets.len() > 64 && sets.len().is_power_of_two() {
            sets.retain(|_, b| b.iter().any(|e| e.compiled.strong_count() > 0));
        }
        compiled
    }

    /// Distinct rule sets currently alive.
    pub fn live_sets(&self) -> usize {
        self.sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flatten()
            .filter(|e| e.compiled.strong_count() > 0)
            .count()
    }
}

/// A hash of the rules' every field, to find candidates quickly; equality
/// is still checked in full.
fn fingerprint(rules: &[&tailcfg::FilterRule]) -> u64 {
    let mut h = DefaultHasher::new();
    rules.len().hash(&mut h);
    for rule in rules {
        rule.srcips.hash(&mut h);
        rule.dstports.len().hash(&mut h);
        for d in &rule.dstports {
            (&d.ip, d.ports.first, d.ports.last).hash(&mut h);
        }
        rule.ipproto.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::json::from_slice;

    fn rules(json: &str) -> Vec<tailcfg::FilterRule> {
        from_slice(json.as_bytes()).unwrap()
    }

    fn refs(rules: &[tailcfg::FilterRule]) -> Vec<&tailcfg::FilterRule> {
        rules.iter().collect()
    }

    const WEB: &str = r#"[{"SrcIPs": ["100.64.0.0/10", "fd7a:115c:a1e0::/48"],
                           "DstPorts": [{"IP": "*", "Ports": {"First": 80, "Last": 80}}]}]"#;

    #[test]
    fn control_rules_become_engine_rules() {
        let control = rules(
            r#"[{"SrcIPs": ["100.64.0.1", "tag:bogus"], "DstPorts": [{"IP": "100.64.0.2/32", "Ports": {"First": 22, "Last": 23}}], "IPProto": [6]}]"#,
        );
        let (converted, errors) = convert(&refs(&control));
        assert_eq!(errors.len(), 1, "the tag is not an address: {errors:?}");
        assert_eq!(converted.len(), 1);
        let compiled = CompiledRules::new(&converted);
        let (a, b) = ("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap());
        assert!(compiled.allows(6, a, b, 22));
        assert!(!compiled.allows(17, a, b, 22), "only TCP was listed");
        assert!(!compiled.allows(6, a, b, 24));
        assert!(!compiled.allows(6, b, a, 22));
    }

    #[test]
    fn empty_rules_deny_everything() {
        let cache = FilterCache::default();
        let none = cache.compile(&[]);
        assert!(none.is_empty());
        let (a, b) = ("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap());
        assert!(!none.allows(17, a, b, 53));
    }

    #[test]
    fn identical_rules_share_one_compiled_set() {
        let cache = FilterCache::default();
        let (web, web_again) = (rules(WEB), rules(WEB));
        let first = cache.compile(&refs(&web));
        let second = cache.compile(&refs(&web_again));
        assert!(Arc::ptr_eq(&first, &second));
        let all = rules(
            r#"[{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]"#,
        );
        let other = cache.compile(&refs(&all));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(cache.live_sets(), 2);
        // Once every holder lets go, the set is forgotten and rebuilt on demand.
        drop((first, second, other));
        assert_eq!(cache.live_sets(), 0);
        let again = cache.compile(&refs(&web));
        assert!(!again.is_empty());
        assert_eq!(cache.live_sets(), 1);
    }
}
