//! X25519 keys in Tailscale's text forms.
//!
//! Private keys print as `privkey:<hex>`; public keys carry their role:
//! `mkey:` (machine, the Noise static key), `nodekey:` (WireGuard and DERP
//! identity), `discokey:` (disco boxes). Debug output never shows a private key.

use std::fmt;

use rand::rngs::OsRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use x25519_dalek::{PublicKey, StaticSecret};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid key {text:?}: {reason}")]
pub struct KeyError {
    text: String,
    reason: &'static str,
}

fn parse_hex32(text: &str, prefix: &str) -> Result<[u8; 32], KeyError> {
    let err = |reason| KeyError {
        // Never echo what could be private material.
        text: if prefix == "privkey:" {
            "privkey:…".into()
        } else {
            text.chars().take(80).collect()
        },
        reason,
    };
    let hex_part = text
        .strip_prefix(prefix)
        .ok_or_else(|| err("wrong prefix"))?;
    // Decoded in place: netmaps carry a key per peer, and an allocation
    // per key was most of what parsing one cost.
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut key).map_err(|e| match e {
        hex::FromHexError::InvalidStringLength => err("not 32 bytes"),
        _ => err("not hex"),
    })?;
    Ok(key)
}

/// A private X25519 key.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

impl PrivateKey {
    pub fn generate() -> Self {
        Self(StaticSecret::random_from_rng(OsRng))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("privkey:[redacted]")
    }
}

impl Serialize for PrivateKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("privkey:{}", hex::encode(self.to_bytes())))
    }
}

impl<'de> Deserialize<'de> for PrivateKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_hex32(&text, "privkey:")
            .map(Self::from_bytes)
            .map_err(serde::de::Error::custom)
    }
}

macro_rules! public_key {
    ($name:ident, $prefix:literal) => {
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn parse(text: &str) -> Result<Self, KeyError> {
                parse_hex32(text, $prefix).map(Self)
            }

            pub fn is_zero(&self) -> bool {
                self.0 == [0; 32]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Short form, as Tailscale's logs do.
                write!(
                    f,
                    "{}[{}]",
                    $prefix.trim_end_matches(':'),
                    &hex::encode(&self.0[..4])
                )
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

public_key!(MachinePublic, "mkey:");
public_key!(NodePublic, "nodekey:");
public_key!(DiscoPublic, "discokey:");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        let key = PrivateKey::generate();
        let node = NodePublic(key.public());
        let text = node.to_string();
        assert!(text.starts_with("nodekey:") && text.len() == 8 + 64);
        assert_eq!(NodePublic::parse(&text), Ok(node));
        assert!(NodePublic::parse(&text.replace("nodekey:", "mkey:")).is_err());
        let json = serde_json::to_string(&key).unwrap();
        let back: PrivateKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
    }

    #[test]
    fn keys_of_any_hex_case_parse_and_malformed_ones_do_not() {
        let node = NodePublic(PrivateKey::from_bytes([0x5c; 32]).public());
        let text = node.to_string();
        let not_hex_text = format!("nodekey:g{}", &text["nodekey:".len() + 1..]);
        let upper = format!("nodekey:{}", text["nodekey:".len()..].to_uppercase());
        assert_eq!(NodePublic::parse(&upper), Ok(node));
        for bad in [
            &text[..text.len() - 2], // 31 bytes
            &text[..text.len() - 1], // odd length
            &format!("{text}00"),    // 33 bytes
            &not_hex_text,           // not hex, right length
            "nodekey:",
        ] {
            let err = NodePublic::parse(bad).expect_err(bad);
            assert!(
                err.reason == "not 32 bytes" || err.reason == "not hex",
                "{bad}: {err:?}"
            );
        }
        let wrong_length = NodePublic::parse(&text[..text.len() - 2]).unwrap_err();
        assert_eq!(wrong_length.reason, "not 32 bytes");
        let not_hex = NodePublic::parse(&not_hex_text);
        assert_eq!(not_hex.unwrap_err().reason, "not hex");
    }

    #[test]
    fn debug_never_shows_private_material() {
        let key = PrivateKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("abab"), "{shown}");
        let bad = serde_json::from_str::<PrivateKey>("\"privkey:abab\"").unwrap_err();
        assert!(!bad.to_string().contains("abab"), "{bad}");
    }
}
