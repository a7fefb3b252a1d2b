use crate::filter::tests::{ip, PEER4, POD4};
use crate::filter::{AddrMatch, CompiledRules, FilterParseError, FilterRule};

#[test]
fn parses_every_address_form() {
    assert_eq!("*".parse(), Ok(AddrMatch::Any));
    assert_eq!("100.64.0.1".parse(), Ok(AddrMatch::Addr(ip("100.64.0.1"))));
    assert_eq!(
        "100.64.0.0/10".parse(),
        Ok(AddrMatch::Prefix {
            addr: ip("100.64.0.0"),
            len: 10
        })
    );
    assert_eq!(
        "fd7a:115c:a1e0::/48".parse(),
        Ok(AddrMatch::Prefix {
            addr: ip("fd7a:115c:a1e0::"),
            len: 48
        })
    );
    assert_eq!(
        "100.64.0.1-100.64.0.9".parse(),
        Ok(AddrMatch::Range {
            first: ip("100.64.0.1"),
            last: ip("100.64.0.9")
        })
    );
    for bad in [
        "",
        "100.64.0.0/33",
        "::/129",
        "1.2.3.4-::1",
        "1.2.3.9-1.2.3.1",
        "tag:web",
        "1.2.3/8",
        "autogroup:internet",
    ] {
        assert!(
            bad.parse::<AddrMatch>().is_err(),
            "{bad:?} should not parse"
        );
    }
}

#[test]
fn addr_match_contains() {
    let prefix: AddrMatch = "100.64.1.7/24".parse().unwrap();
    assert!(prefix.contains(ip("100.64.1.0")) && prefix.contains(ip("100.64.1.255")));
    assert!(!prefix.contains(ip("100.64.2.0")));
    assert!(!prefix.contains(ip("fd7a:115c:a1e0::1")));
    let range: AddrMatch = "fd7a::5-fd7a::9".parse().unwrap();
    assert!(range.contains(ip("fd7a::5")) && range.contains(ip("fd7a::9")));
    assert!(!range.contains(ip("fd7a::a")) && !range.contains(ip("fd7a::4")));
    let zero: AddrMatch = "0.0.0.0/0".parse().unwrap();
    assert!(zero.contains(ip("255.255.255.255")) && !zero.contains(ip("::1")));
    let any = AddrMatch::Any;
    assert!(any.contains(ip("1.1.1.1")) && any.contains(ip("::1")));
}

#[test]
fn strict_and_lenient_parsing() {
    let err = FilterRule::parse(["*", "bogus"], [("*", 22, 22)], [6i64]).unwrap_err();
    assert!(matches!(err, FilterParseError::BadAddress { ref entry, .. } if entry == "bogus"));
    assert_eq!(
        FilterRule::parse(["*"], [("*", 22, 22)], [6i64, 300]),
        Err(FilterParseError::BadProtocol(300))
    );

    let (rule, errors) = FilterRule::parse_lenient(
        ["bogus", PEER4],
        [("nope", 1, 1), (POD4, 22, 22)],
        [6i64, -1],
    );
    assert_eq!(errors.len(), 3);
    assert_eq!(rule.src_ips, vec![AddrMatch::Addr(ip(PEER4))]);
    assert_eq!(rule.dst_ports.len(), 1);
    assert_eq!(rule.ip_proto, vec![6]);

    // Only invalid protocols: the rule must match nothing, not default.
    let (rule, _) = FilterRule::parse_lenient(["*"], [("*", 0, 65535)], [999i64]);
    let rules = CompiledRules::new(&[rule]);
    assert!(rules.is_empty());
}
