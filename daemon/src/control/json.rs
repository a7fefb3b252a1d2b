//! Decoding JSON the way Go's encoding/json does.
//!
//! Go matches struct field names case-insensitively (rscale sends `Id` where
//! Go sends `ID`), treats missing and `null` fields as zero values, and
//! ignores unknown fields. Here every object key is lowercased before serde
//! sees it (our structs name their fields in lowercase), except the keys of
//! fields that are maps in Go, whose keys are data: region ids, capability
//! names, filter names, domains.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Go map-typed fields (lowercased names) whose keys must be kept as sent.
const MAP_FIELDS: &[&str] = &[
    "regions",
    "capmap",
    "packetfilters",
    "onlinechange",
    "peerseenchange",
    "routes",
    "userprofiles_by_id",
    "extramap",
];

fn normalize(value: Value, keys_are_data: bool) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, child) in map {
                let key = if keys_are_data {
                    key
                } else {
                    key.to_ascii_lowercase()
                };
                let child_is_map = !keys_are_data && MAP_FIELDS.contains(&key.as_str());
                out.insert(key, normalize(child, child_is_map));
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| normalize(v, false)).collect())
        }
        other => other,
    }
}

/// Decodes `bytes` into `T` with Go's leniency.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let value: Value = serde_json::from_slice(bytes)?;
    serde_json::from_value(normalize(value, false))
}

/// Null and missing both mean "zero value" in Go.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Deserialize, Debug, Default)]
    #[serde(default)]
    struct Region {
        regionid: i64,
        regioncode: String,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(default)]
    struct Outer {
        id: i64,
        name: String,
        #[serde(deserialize_with = "null_as_default")]
        tags: Vec<String>,
        regions: BTreeMap<String, Region>,
        capmap: BTreeMap<String, Value>,
    }

    #[test]
    fn field_names_match_case_insensitively_but_map_keys_are_kept() {
        let text = br#"{"Id": 7, "NAME": "x", "Tags": null, "Unknown": 1,
            "Regions": {"900": {"RegionID": 900, "regionCode": "loop"}},
            "CapMap": {"https://Tailscale.com/cap/X": [1]}}"#;
        let outer: Outer = from_slice(text).unwrap();
        assert_eq!(outer.id, 7);
        assert_eq!(outer.name, "x");
        assert!(outer.tags.is_empty());
        assert_eq!(outer.regions["900"].regionid, 900);
        assert_eq!(outer.regions["900"].regioncode, "loop");
        assert!(outer.capmap.contains_key("https://Tailscale.com/cap/X"));
    }

    #[test]
    fn missing_fields_are_zero_values() {
        let outer: Outer = from_slice(b"{}").unwrap();
        assert_eq!(outer.id, 0);
        assert!(outer.regions.is_empty());
    }
}
