//! The configuration file (TOML). Every field is optional and documented here; unknown fields
//! are errors that name the file, line and column. Command-line flags override the file.
//!
//! The full list, from `turn-server/turn-server.example.toml`:
//!
#![doc = concat!("```toml\n", include_str!("../turn-server.example.toml"), "```")]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::Cidr;

/// The file's contents, typed. `None` means "not set in the file".
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// REALM.
    pub realm: Option<String>,
    /// UDP+TCP listen addresses.
    pub listen: Option<Vec<SocketAddr>>,
    /// TLS listen addresses.
    pub tls_listen: Option<Vec<SocketAddr>>,
    /// TLS certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub pkey: Option<PathBuf>,
    /// Metrics/control HTTP address.
    pub metrics: Option<SocketAddr>,
    /// Allow `POST /faults`.
    pub http_faults: Option<bool>,
    /// IPv4 relay address.
    pub relay_ip: Option<Ipv4Addr>,
    /// IPv6 relay address.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Lowest relayed port.
    pub min_port: Option<u16>,
    /// Highest relayed port.
    pub max_port: Option<u16>,
    /// Shared secret of time-limited credentials.
    pub static_auth_secret: Option<String>,
    /// Peer ranges allowed.
    pub allow_peer: Option<Vec<CidrString>>,
    /// Allow loopback peers.
    pub allow_loopback_peers: Option<bool>,
    /// Allocations per user.
    pub user_quota: Option<u32>,
    /// Allocations in all.
    pub total_quota: Option<u32>,
    /// Relayed bits per second per allocation; 0 = no cap.
    pub max_bps: Option<u64>,
    /// Seconds a TCP/TLS connection may hold no allocation.
    pub stream_idle_timeout: Option<std::num::NonZeroU64>,
    /// TCP/TLS connections in all.
    pub max_streams: Option<u32>,
    /// TCP/TLS connections per source address.
    pub max_streams_per_source: Option<u32>,
    /// Nonce lifetime, seconds.
    pub nonce_lifetime: Option<u64>,
    /// Longest allocation lifetime, seconds.
    pub max_lifetime: Option<u64>,
    /// SOFTWARE attribute.
    pub software: Option<String>,
    /// Log filter.
    pub log: Option<String>,
    /// Long-term users.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Faults at start.
    #[serde(default)]
    pub faults: FaultsConfig,
}

/// The `[faults]` table.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FaultsConfig {
    /// Answer Allocate with 508.
    #[serde(default)]
    pub refuse_allocations: bool,
    /// Answer every credential with 401.
    #[serde(default)]
    pub fail_auth: bool,
    /// Answer nothing.
    #[serde(default)]
    pub unresponsive: bool,
    /// Close TCP/TLS connections.
    #[serde(default)]
    pub drop_streams: bool,
    /// Processing delay, milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
}

/// A CIDR as written in the file, parsed (so a bad one is reported at its position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrString(pub Cidr);

impl<'de> Deserialize<'de> for CidrString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(CidrString).map_err(serde::de::Error::custom)
    }
}

/// A configuration file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown field or a bad value.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What is wrong.
        message: String,
    },
}

impl FileConfig {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`ConfigError`] with the file, line and column of the first problem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`, naming `path` in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] with the line and column of the first problem.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start).min(text.len());
            let (line, column) = line_column(text, offset);
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset;
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn documented_example_parses() {
        let text = include_str!("../turn-server.example.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.realm.as_deref(), Some("example.org"));
        assert_eq!(
            c.users.get("alice").map(String::as_str),
            Some("correct horse")
        );
        assert_eq!(c.tls_listen.unwrap().len(), 2);
        assert_eq!(c.allow_peer.unwrap()[0].0.to_string(), "203.0.113.0/24");
        assert_eq!(c.http_faults, Some(false));
    }

    #[test]
    fn unknown_field_is_reported_with_line_and_column() {
        let e = parse("realm = \"x\"\n\n  lisen = [\"127.0.0.1:3478\"]\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.toml:3:3: "), "{s}");
        assert!(s.contains("lisen"), "{s}");
        let e = parse("[faults]\ndelay = 5\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:2:1: "), "{e}");
    }

    #[test]
    fn bad_values_are_reported_where_they_are() {
        let e = parse("min_port = 70000\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:1:12: "), "{e}");
        let e = parse("allow_peer = [\"10.0.0.0/40\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:1:14: ") && e.contains("invalid CIDR"),
            "{e}"
        );
        let e = parse("listen = [\"nowhere\"]\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:1:11: "), "{e}");
        let e = parse("stream_idle_timeout = 0\n").unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml:1:23: ") && e.contains("nonzero"),
            "{e}"
        );
    }
}
