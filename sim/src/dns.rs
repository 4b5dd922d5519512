//! The agents' name resolution: the simulator's own names, filtered by the site's DNS policy.
//!
//! Agents are given TURN and signalling URLs with host names (as a hosted softphone gives
//! `turn:TurnNlb-….elb.{region}.amazonaws.com`); a site whose DNS will not resolve them fails
//! there, before any packet is sent — the CCP's "Failed to establish softphone connection".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::scenario::Policy;

/// What an agent at a site with `policy` gets when it looks up `name`, which the simulator
/// serves at `served` (the site's path to it): `served`, or the site's DNS refusal, worded as
/// the call record's failure detail.
pub fn resolve<T>(policy: &Policy, name: &str, served: T) -> Result<T, String> {
    if policy.resolves(name) {
        Ok(served)
    } else {
        Err(format!("{name}: the site's DNS does not resolve this name"))
    }
}

/// A name served by several nodes, as a load balancer's DNS name is (the vendor's TURN
/// names resolve to one address per zone): each lookup answers one address, in turn among the
/// nodes the DNS still answers, as a resolver rotating a round-robin answer hands a browser
/// its first address.
#[derive(Debug)]
pub struct NodeName {
    /// Per node: the address the agents reach it at, and when the DNS stops answering it.
    nodes: Vec<(SocketAddr, Option<Instant>)>,
    /// Lookups so far (the rotation).
    lookups: AtomicUsize,
}

impl NodeName {
    /// A name for `nodes`: each node's address, and the instant (if any) its address leaves
    /// the DNS.
    pub fn new(nodes: Vec<(SocketAddr, Option<Instant>)>) -> Self {
        Self {
            nodes,
            lookups: AtomicUsize::new(0),
        }
    }

    /// The address a lookup of `name` answers at `now`, or why there is none.
    pub fn resolve(&self, name: &str, now: Instant) -> Result<SocketAddr, String> {
        let live: Vec<SocketAddr> = self
            .nodes
            .iter()
            .filter(|(_, removed)| removed.is_none_or(|r| now < r))
            .map(|(addr, _)| *addr)
            .collect();
        if live.is_empty() {
            return Err(format!("{name}: every node has left the DNS"));
        }
        let turn = self.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(live[turn % live.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_node_name_rotates_among_the_nodes_the_dns_still_answers() {
        let t0 = Instant::now();
        let (a, b) = (
            SocketAddr::from(([127, 0, 0, 1], 1000)),
            SocketAddr::from(([127, 0, 0, 1], 2000)),
        );
        let name = NodeName::new(vec![(a, Some(t0 + Duration::from_secs(10))), (b, None)]);
        let before: Vec<_> = (0..4).map(|_| name.resolve("turn", t0).unwrap()).collect();
        assert_eq!(before, [a, b, a, b]);
        let after: Vec<_> = (0..3)
            .map(|_| name.resolve("turn", t0 + Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(after, [b, b, b]);
        let gone = NodeName::new(vec![(a, Some(t0))]);
        assert_eq!(
            gone.resolve("turn", t0),
            Err("turn: every node has left the DNS".into())
        );
    }

    #[test]
    fn resolves_through_the_policy() {
        let open = Policy::default();
        assert_eq!(resolve(&open, "turn.sim.local", 1), Ok(1));
        let restricted = Policy {
            unresolvable: vec!["turn.*".into()],
            ..Policy::default()
        };
        assert_eq!(
            resolve(&restricted, "turn.sim.local", 1),
            Err("turn.sim.local: the site's DNS does not resolve this name".into())
        );
        assert_eq!(resolve(&restricted, "signalling.sim.local", 2), Ok(2));
    }
}
