//! Per-interface and global IP sysctls, written through /proc/sys of the
//! calling thread's network namespace.

use std::fs;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("sysctl {path}: {source}")]
pub struct SysctlError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn path_of(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Reads a sysctl value (trimmed). `key` is dotted, e.g. `net.ipv4.ip_forward`;
/// interface names must not contain dots (ours never do).
pub fn read(key: &str) -> Result<String, SysctlError> {
    let path = path_of(key);
    fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|source| SysctlError { path, source })
}

/// Reads a sysctl that may legitimately be absent (a family the kernel was
/// built or booted without, a link that has no such setting): `None` then.
pub fn read_optional(key: &str) -> Result<Option<String>, SysctlError> {
    match read(key) {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Whether a sysctl or a directory of them (`net.ipv6`) exists.
pub fn exists(key: &str) -> bool {
    path_of(key).exists()
}

/// Writes `value` unless the sysctl already holds it. Returns whether it
/// changed anything.
pub fn ensure(key: &str, value: &str) -> Result<bool, SysctlError> {
    if read(key)? == value {
        return Ok(false);
    }
    let path = path_of(key);
    fs::write(&path, value).map_err(|source| SysctlError { path, source })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_keys_map_to_proc_paths() {
        assert_eq!(
            path_of("net.ipv4.conf.tnt0123456789.rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/tnt0123456789/rp_filter")
        );
    }

    #[test]
    fn a_missing_key_is_absent_not_an_error_when_optional() {
        assert_eq!(
            read_optional("net.ipv4.conf.does-not-exist-xyz.rp_filter").unwrap(),
            None
        );
        assert!(!exists("net.ipv4.conf.does-not-exist-xyz"));
    }

    #[test]
    fn reading_a_missing_key_reports_the_path() {
        let err = read("net.ipv4.conf.does-not-exist-xyz.rp_filter").unwrap_err();
        assert!(err
            .to_string()
            .contains("/proc/sys/net/ipv4/conf/does-not-exist-xyz/rp_filter"));
    }
}
