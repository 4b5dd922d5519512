//! TURN server URLs (RFC 7065): `turn:HOST[:PORT][?transport=udp|tcp]` and `turns:HOST[:PORT]`,
//! as scenario files and the `loadgen --turn` flag give them.

use std::fmt;

/// A `turn:` / `turns:` URL (RFC 7065).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnUrl {
    /// `turns:` (TLS).
    pub secure: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport to the server.
    pub transport: Transport,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (or TLS over TCP).
    Tcp,
}

impl Transport {
    /// `udp` or `tcp`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

impl fmt::Display for TurnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "turns" } else { "turn" };
        write!(
            f,
            "{scheme}:{}:{}?transport={}",
            self.host,
            self.port,
            self.transport.as_str()
        )
    }
}

impl TurnUrl {
    /// Parses `turn:HOST[:PORT][?transport=udp|tcp]` (RFC 7065; default port 3478, 5349 for
    /// `turns:`; default transport UDP, TCP for `turns:`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "expected a TURN URL like \"turn:turn.example.com:3478?transport=udp\", found \"{s}\""
            )
        };
        let (secure, rest) = if let Some(r) = s.strip_prefix("turns:") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("turn:") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
        let transport = match query {
            "" => {
                if secure {
                    Transport::Tcp
                } else {
                    Transport::Udp
                }
            }
            "transport=udp" => Transport::Udp,
            "transport=tcp" => Transport::Tcp,
            other => {
                return Err(format!(
                    "unknown TURN URL parameter \"{other}\" (expected transport=udp or transport=tcp)"
                ));
            }
        };
        if secure && transport == Transport::Udp {
            return Err(
                "turns: runs over TLS, so its transport must be tcp (DTLS is not supported)"
                    .to_owned(),
            );
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !h.is_empty() => (
                h,
                p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?,
            ),
            _ => (hostport, if secure { 5349 } else { 3478 }),
        };
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(bad());
        }
        Ok(Self {
            secure,
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            transport,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_urls() {
        let u = TurnUrl::parse("turn:turn.sim.local:3478?transport=udp").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.transport, u.secure),
            ("turn.sim.local", 3478, Transport::Udp, false)
        );
        assert_eq!(u.to_string(), "turn:turn.sim.local:3478?transport=udp");
        let s = TurnUrl::parse("turns:turn.example.com").unwrap();
        assert_eq!((s.port, s.transport), (5349, Transport::Tcp));
        assert!(TurnUrl::parse("turns:x:443?transport=udp").is_err());
        assert!(TurnUrl::parse("stun:x").is_err());
        assert!(TurnUrl::parse("turn:x:0").is_err());
    }
}
