//! The agents' name resolution: the simulator's own names, filtered by the site's DNS policy.
//!
//! Agents are given TURN and signalling URLs with host names (as a hosted softphone gives
//! `turn:TurnNlb-….elb.{region}.amazonaws.com`); a site whose DNS will not resolve them fails
//! there, before any packet is sent — the CCP's "Failed to establish softphone connection".

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

#[cfg(test)]
mod tests {
    use super::*;

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
