use super::*;
use crate::filter::tests::{ip, rule, PEER4, PEER6, POD4, POD6};
use crate::packet::proto;

#[test]
fn family_split_and_overlapping_sources() {
    // One rule with both families; sources overlap and touch.
    let rules = CompiledRules::new(&[rule(
        &[
            "100.64.0.0/24",
            "100.64.0.128-100.64.1.5",
            "100.64.1.6",
            "fd7a:115c:a1e0::/48",
        ],
        &[(POD4, 1, 1), (POD6, 2, 2)],
        &[],
    )]);
    assert_eq!(
        rules.v4.matches[0].srcs.ranges.len(),
        1,
        "merged v4 sources"
    );
    assert!(rules.allows(proto::UDP, ip("100.64.1.6"), ip(POD4), 1));
    assert!(!rules.allows(proto::UDP, ip("100.64.1.7"), ip(POD4), 1));
    assert!(!rules.allows(proto::UDP, ip("100.64.0.1"), ip(POD4), 2));
    assert!(rules.allows(proto::UDP, ip(PEER6), ip(POD6), 2));
    assert!(!rules.allows(proto::UDP, ip(PEER6), ip(POD6), 1));
    assert!(!rules.allows(proto::UDP, ip(PEER4), ip(POD6), 2));

    // A rule whose sources are only IPv4 cannot admit IPv6 traffic.
    let v4_only = CompiledRules::new(&[rule(&[PEER4], &[("*", 0, 65535)], &[])]);
    assert!(v4_only.v6.matches.is_empty());
    assert!(!v4_only.allows_addresses(ip(PEER6), ip(POD6)));
}

#[test]
fn range_set_edges() {
    let set = RangeSet::new(vec![
        (10u32, 20),
        (0, 0),
        (21, 30),
        (u32::MAX, u32::MAX),
        (40, 50),
    ]);
    assert_eq!(
        set.ranges,
        vec![(0, 0), (10, 30), (40, 50), (u32::MAX, u32::MAX)]
    );
    for (a, inside) in [
        (0, true),
        (1, false),
        (10, true),
        (30, true),
        (31, false),
        (45, true),
        (u32::MAX, true),
        (u32::MAX - 1, false),
    ] {
        assert_eq!(set.contains(a), inside, "{a}");
    }
    let full = RangeSet::new(vec![(0u128, u128::MAX), (5, 6)]);
    assert_eq!(full.ranges, vec![(0, u128::MAX)]);
}
