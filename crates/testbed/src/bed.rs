//! The test bed's environment: what `scripts/testbed.sh env` exports.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use crate::needs::Missing;
use crate::Admin;

/// How to get the test bed's environment.
const SOURCE_BED: &str = "run inside scripts/test-in-netns.sh, or \
     `scripts/testbed.sh up && source <(scripts/testbed.sh env)` (as root)";
/// How to repair a bed whose environment is incomplete.
const RESTART_BED: &str =
    "the test bed is not fully up: `scripts/testbed.sh down && scripts/testbed.sh up`, then source its env again";

/// The real test bed on loopback: rscale (control, DERP, STUN) with its
/// PostgreSQL, and one official tailscaled peer registered there.
#[derive(Debug, Clone)]
pub struct Bed {
    /// Its runtime directory (`TAILNET_TESTBED_DIR`).
    pub dir: PathBuf,
    /// rscale's base URL, plain HTTP on loopback.
    pub control_url: String,
    /// The address in `control_url`.
    pub control_addr: SocketAddr,
    /// The file holding rscale's admin token.
    pub admin_token_file: PathBuf,
    pub rscale_bin: PathBuf,
    pub tailscale_bin: PathBuf,
    pub tailscaled_bin: PathBuf,
    /// The peer's LocalAPI socket (for `tailscale --socket`).
    pub peer_socket: PathBuf,
    /// The peer's SOCKS5 proxy into the tailnet, `ip:port`.
    pub peer_socks5: String,
    pub peer_ipv4: Ipv4Addr,
    pub peer_ipv6: Ipv6Addr,
    /// rscale's STUN port on 127.0.0.1.
    pub stun_port: u16,
    /// The DERP region rscale serves.
    pub derp_region: u16,
}

impl Bed {
    /// The shared test bed, from this process's environment.
    pub fn from_env() -> Result<Self, Missing> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// A bed from the `export NAME="value"` lines `scripts/testbed.sh env`
    /// prints (a private bed's).
    pub fn from_exports(text: &str) -> Result<Self, Missing> {
        let vars: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name, value.trim_matches('"')))
            .collect();
        Self::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        })
    }

    /// A bed from the variables `lookup` reads.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Missing> {
        let text = |name: &str| match lookup(name) {
            None => Err(Missing::new(format!("{name} is not set"), SOURCE_BED)),
            Some(value) if value.is_empty() => {
                Err(Missing::new(format!("{name} is empty"), RESTART_BED))
            }
            Some(value) => Ok(value),
        };
        let control_url = text("TAILNET_TEST_CONTROL_URL")?;
        let control_addr = control_url
            .strip_prefix("http://")
            .and_then(|rest| rest.trim_end_matches('/').parse().ok())
            .ok_or_else(|| {
                Missing::new(
                    format!("TAILNET_TEST_CONTROL_URL={control_url:?} is not http://<ip>:<port>"),
                    RESTART_BED,
                )
            })?;
        let peer_socks5 = text("TAILNET_TEST_PEER_SOCKS5")?;
        parse::<SocketAddr>(&peer_socks5).ok_or_else(|| {
            Missing::new(
                format!("TAILNET_TEST_PEER_SOCKS5={peer_socks5:?} is not ip:port"),
                RESTART_BED,
            )
        })?;
        Ok(Self {
            dir: text("TAILNET_TESTBED_DIR")?.into(),
            control_url,
            control_addr,
            admin_token_file: text("TAILNET_TEST_ADMIN_TOKEN_FILE")?.into(),
            rscale_bin: text("TAILNET_TEST_RSCALE_BIN")?.into(),
            tailscale_bin: text("TAILNET_TEST_TAILSCALE_BIN")?.into(),
            tailscaled_bin: text("TAILNET_TEST_TAILSCALED_BIN")?.into(),
            peer_socket: text("TAILNET_TEST_PEER_SOCKET")?.into(),
            peer_socks5,
            peer_ipv4: parsed(&text, "TAILNET_TEST_PEER_IPV4", "an IPv4 address")?,
            peer_ipv6: parsed(&text, "TAILNET_TEST_PEER_IPV6", "an IPv6 address")?,
            stun_port: parsed(&text, "TAILNET_TEST_STUN_PORT", "a port")?,
            derp_region: parsed(&text, "TAILNET_TEST_DERP_REGION", "a region id")?,
        })
    }

    /// rscale's admin API.
    pub fn admin(&self) -> Admin {
        Admin::new(self.control_addr, self.admin_token_file.clone())
    }

    /// The port of rscale's PostgreSQL (`pg.port` in the bed's directory).
    pub fn database_port(&self) -> Result<u16, Missing> {
        let file = self.dir.join("pg.port");
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| parse(text.trim()))
            .ok_or_else(|| Missing::new(format!("{} holds no port", file.display()), RESTART_BED))
    }
}

fn parse<T: FromStr>(text: &str) -> Option<T> {
    text.parse().ok()
}

/// Variable `name` (read through `text`) parsed as `what`.
fn parsed<T: FromStr>(
    text: &impl Fn(&str) -> Result<String, Missing>,
    name: &str,
    what: &str,
) -> Result<T, Missing> {
    let value = text(name)?;
    parse(&value)
        .ok_or_else(|| Missing::new(format!("{name}={value:?} is not {what}"), RESTART_BED))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORTS: &str = r#"export TAILNET_TESTBED_DIR="/run/tailnet-cni-testbed"
export TAILNET_TEST_CONTROL_URL="http://127.0.0.1:41000"
export TAILNET_TEST_ADMIN_TOKEN_FILE="/run/tailnet-cni-testbed/admin-token"
export TAILNET_TEST_RSCALE_BIN="/var/cache/tailnet-cni/rscale/bin/rscale"
export TAILNET_TEST_TAILSCALE_BIN="/var/cache/tailnet-cni/tailscale-1.96.4/tailscale"
export TAILNET_TEST_TAILSCALED_BIN="/var/cache/tailnet-cni/tailscale-1.96.4/tailscaled"
export TAILNET_TEST_PEER_SOCKET="/run/tailnet-cni-testbed/peer/sock"
export TAILNET_TEST_PEER_SOCKS5="127.0.0.1:41002"
export TAILNET_TEST_PEER_IPV4="100.64.0.1"
export TAILNET_TEST_PEER_IPV6="fd7a:115c:a1e0::1"
export TAILNET_TEST_STUN_PORT="41001"
export TAILNET_TEST_DERP_REGION=900
"#;

    #[test]
    fn the_exports_of_testbed_env_make_a_bed() {
        let bed = Bed::from_exports(EXPORTS).expect("a complete bed");
        assert_eq!(bed.control_addr, SocketAddr::from(([127, 0, 0, 1], 41000)));
        assert_eq!(bed.peer_ipv4, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(bed.stun_port, 41001);
        assert_eq!(bed.derp_region, 900);
    }

    #[test]
    fn a_missing_or_empty_variable_is_named() {
        let missing = Bed::from_exports("").expect_err("nothing exported");
        assert_eq!(missing.what, "TAILNET_TEST_CONTROL_URL is not set");
        assert!(
            missing.remedy.contains("scripts/test-in-netns.sh"),
            "{missing}"
        );
        assert!(
            missing.remedy.contains("source <(scripts/testbed.sh env)"),
            "{missing}"
        );

        let no_peer = EXPORTS.replace("\"100.64.0.1\"", "\"\"");
        let missing = Bed::from_exports(&no_peer).expect_err("the peer is not up");
        assert_eq!(missing.what, "TAILNET_TEST_PEER_IPV4 is empty");
    }
}
