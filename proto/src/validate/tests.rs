use super::*;

#[test]
fn container_ids_follow_the_cni_rule() {
    for good in [
        "a",
        "0",
        "abc123",
        "a_b.c-d",
        "abc-DEF_1.2",
        "a..b",
        &"f".repeat(64),
        &"a".repeat(MAX_CONTAINER_ID_LEN),
    ] {
        assert_eq!(container_id(good), Ok(()), "{good:?}");
    }
    assert_eq!(container_id(""), Err(InvalidContainerId::Empty));
    assert_eq!(
        container_id(&"a".repeat(MAX_CONTAINER_ID_LEN + 1)),
        Err(InvalidContainerId::TooLong(MAX_CONTAINER_ID_LEN + 1))
    );
    for (bad, first) in [
        (".", '.'),
        ("..", '.'),
        (".hidden", '.'),
        ("../etc/passwd", '.'),
        ("-a", '-'),
        ("_a", '_'),
        ("/abs", '/'),
        ("\0a", '\0'),
        ("é", 'é'),
    ] {
        assert_eq!(
            container_id(bad),
            Err(InvalidContainerId::BadFirstCharacter(first)),
            "{bad:?}"
        );
    }
    for (bad, found) in [
        ("a/b", '/'),
        ("a/../b", '/'),
        ("a b", ' '),
        ("a;b", ';'),
        ("a\0", '\0'),
        ("a:b", ':'),
        ("aé", 'é'),
    ] {
        assert_eq!(
            container_id(bad),
            Err(InvalidContainerId::BadCharacter(found)),
            "{bad:?}"
        );
    }
}

#[test]
fn container_id_length_counts_bytes() {
    // Non-ASCII is refused anyway, but the bound is on bytes, checked first.
    let long = "é".repeat(MAX_CONTAINER_ID_LEN / 2 + 1);
    assert_eq!(
        container_id(&long),
        Err(InvalidContainerId::TooLong(long.len()))
    );
}

#[test]
fn interface_names_follow_the_kernel_rule() {
    for good in [
        "ts0",
        "eth0",
        "a",
        "fifteen-chars-x",
        "a23456789012345",
        "...",
    ] {
        assert_eq!(interface_name(good), Ok(()), "{good:?}");
    }
    assert_eq!(interface_name(""), Err(InvalidInterfaceName::Empty));
    assert_eq!(
        interface_name("sixteen-chars-xx"),
        Err(InvalidInterfaceName::TooLong(16))
    );
    // Fifteen bytes is the bound, not fifteen characters.
    assert_eq!(
        interface_name("éééééééé"),
        Err(InvalidInterfaceName::TooLong(16))
    );
    assert_eq!(interface_name("."), Err(InvalidInterfaceName::DotName));
    assert_eq!(interface_name(".."), Err(InvalidInterfaceName::DotName));
    for (bad, found) in [
        ("a/b", '/'),
        ("../x", '/'),
        ("eth0:1", ':'),
        ("a b", ' '),
        ("a\tb", '\t'),
        ("a\nb", '\n'),
        ("a\0b", '\0'),
        ("\u{a0}x", '\u{a0}'),
    ] {
        assert_eq!(
            interface_name(bad),
            Err(InvalidInterfaceName::BadCharacter(found)),
            "{bad:?}"
        );
    }
}

#[test]
fn errors_say_what_is_wrong() {
    assert_eq!(
        InvalidContainerId::BadCharacter('/').to_string(),
        "container id contains '/'; only letters, digits, '_', '.' and '-' are allowed"
    );
    assert_eq!(
        InvalidInterfaceName::TooLong(16).to_string(),
        "interface name is 16 bytes long, more than 15"
    );
}

#[test]
fn mtu_range_is_the_one_every_setting_obeys() {
    assert_eq!(mtu(u64::from(MIN_MTU)), Ok(MIN_MTU));
    assert_eq!(mtu(u64::from(MAX_MTU)), Ok(MAX_MTU));
    assert_eq!(mtu(1279), Err(InvalidMtu(1279)));
    assert_eq!(mtu(9001), Err(InvalidMtu(9001)));
    assert_eq!(mtu(576), Err(InvalidMtu(576)));
    assert_eq!(mtu(1 << 33), Err(InvalidMtu(1 << 33)));
}
