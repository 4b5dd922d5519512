//! The agents' name resolution: the simulator's own names, filtered by the site's DNS policy.
//!
//! Agents are given TURN and signalling URLs with host names (as a hosted softphone gives
//! `turn:TurnNlb-….elb.{region}.amazonaws.com`); a site whose DNS will not resolve them fails
//! there, before any packet is sent — the CCP's "Failed to establish softphone connection".

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::scenario::Policy;

/// Names the simulator serves and the addresses they resolve to.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    hosts: HashMap<String, IpAddr>,
}

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResolveError {
    /// The site's DNS refuses the name (its policy lists it as unresolvable).
    Blocked(String),
    /// Nobody serves the name.
    Unknown(String),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blocked(n) => write!(f, "{n}: the site's DNS does not resolve this name"),
            Self::Unknown(n) => write!(f, "{n}: no such host"),
        }
    }
}

impl std::error::Error for ResolveError {}

impl Resolver {
    /// A resolver that knows no names.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `name` at `addr` (names are case-insensitive).
    pub fn insert(&mut self, name: &str, addr: IpAddr) {
        self.hosts.insert(name.to_ascii_lowercase(), addr);
    }

    /// Resolves `name` as an agent at a site with `policy` would; IP literals resolve to
    /// themselves.
    pub fn resolve(&self, name: &str, policy: &Policy) -> Result<IpAddr, ResolveError> {
        if let Ok(ip) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(ip);
        }
        if !policy.resolves(name) {
            return Err(ResolveError::Blocked(name.to_owned()));
        }
        self.hosts
            .get(&name.to_ascii_lowercase())
            .copied()
            .ok_or_else(|| ResolveError::Unknown(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_through_the_policy() {
        let mut r = Resolver::new();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        r.insert("turn.sim.local", lo);
        r.insert("signalling.sim.local", lo);
        let open = Policy::default();
        assert_eq!(r.resolve("TURN.sim.local", &open), Ok(lo));
        assert_eq!(r.resolve("::1", &open), Ok("::1".parse().unwrap()));
        assert_eq!(
            r.resolve("nowhere.example", &open),
            Err(ResolveError::Unknown("nowhere.example".into()))
        );
        let restricted = Policy {
            unresolvable: vec!["turn.*".into()],
            ..Policy::default()
        };
        assert_eq!(
            r.resolve("turn.sim.local", &restricted),
            Err(ResolveError::Blocked("turn.sim.local".into()))
        );
        assert_eq!(r.resolve("signalling.sim.local", &restricted), Ok(lo));
    }
}
