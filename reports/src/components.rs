//! What the simulator's own components counted during a run: the TURN server, the signalling
//! endpoint, the media anchor and each site's emulated path.
//!
//! The calls' figures say how the network treated the media; these counters say how the
//! simulator itself behaved while it measured them. They explain failures (a TURN server that
//! answered 401s, a firewall that dropped every datagram to 3478) and they vouch for the figures:
//! a component that could not send (`send_failed`) lost packets the network never saw, and the
//! loss figures then count them too.
//!
//! Counters are plain totals, keyed by component and counter name, so that merged runs add.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The counter every component names its failed sends by: datagrams or bytes the simulator
/// itself could not send (full socket buffers, an overloaded machine).
pub const SEND_FAILED: &str = "send_failed";

/// Reads a component's live counters (shared with the threads that count) as named totals.
#[must_use]
pub fn snapshot(counters: &[(&'static str, &AtomicU64)]) -> Vec<(&'static str, u64)> {
    counters
        .iter()
        .map(|(name, c)| (*name, c.load(Ordering::Relaxed)))
        .collect()
}

/// Counters by component, then by counter name (`summary.json`'s `components`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Components(BTreeMap<String, BTreeMap<String, u64>>);

impl Components {
    /// No counters.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `rows` (counter name, value) to `component`'s counters.
    pub fn add<K: Into<String>>(
        &mut self,
        component: &str,
        rows: impl IntoIterator<Item = (K, u64)>,
    ) {
        let counters = self.0.entry(component.to_owned()).or_default();
        for (name, value) in rows {
            *counters.entry(name.into()).or_default() += value;
        }
    }

    /// Adds every counter of `other` (merging runs or shards).
    pub fn merge(&mut self, other: &Self) {
        for (component, counters) in &other.0 {
            self.add(component, counters.iter().map(|(k, v)| (k.clone(), *v)));
        }
    }

    /// `component`'s `counter` (0 when absent).
    #[must_use]
    pub fn get(&self, component: &str, counter: &str) -> u64 {
        self.0
            .get(component)
            .and_then(|c| c.get(counter))
            .copied()
            .unwrap_or(0)
    }

    /// Each component with its counters, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &BTreeMap<String, u64>)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether nothing was counted (a summary from before components were recorded).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The components whose sends failed, with how many: packets the simulator lost on its own.
    #[must_use]
    pub fn send_failures(&self) -> Vec<(&str, u64)> {
        self.iter()
            .filter_map(|(name, c)| {
                c.get(SEND_FAILED)
                    .copied()
                    .filter(|&n| n > 0)
                    .map(|n| (name, n))
            })
            .collect()
    }
}

/// The warning a report shows when [`Components::send_failures`] is not empty.
#[must_use]
pub fn send_failure_warning(failures: &[(&str, u64)]) -> String {
    let total: u64 = failures.iter().map(|(_, n)| n).sum();
    let list: Vec<String> = failures
        .iter()
        .map(|(name, n)| format!("{name}: {n}"))
        .collect();
    format!(
        "the simulator's own components failed to send {total} packets ({}). Those packets \
         never reached the emulated network, yet the loss figures count them: the machine \
         running the simulator was probably overloaded. Run fewer calls at once, or shard the \
         load.",
        list.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counters_of_the_same_name_and_keeps_the_others() {
        let mut a = Components::new();
        a.add("turn", [("allocations_created", 3), (SEND_FAILED, 0)]);
        a.add("anchor", [("invites", 3)]);
        let mut b = Components::new();
        b.add(
            "turn",
            [("allocations_created", 2), ("error_responses.401", 1)],
        );
        b.add("path hq", [(SEND_FAILED, 4)]);
        a.merge(&b);
        assert_eq!(a.get("turn", "allocations_created"), 5);
        assert_eq!(a.get("turn", "error_responses.401"), 1);
        assert_eq!(a.get("anchor", "invites"), 3);
        assert_eq!(a.get("anchor", "nothing"), 0);
        assert_eq!(a.send_failures(), vec![("path hq", 4)]);
    }

    #[test]
    fn serialises_as_nested_objects_and_reads_back() {
        let mut c = Components::new();
        c.add("signalling", [("connections", 7)]);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"signalling":{"connections":7}}"#);
        assert_eq!(serde_json::from_str::<Components>(&json).unwrap(), c);
    }

    #[test]
    fn the_warning_names_each_component_and_count() {
        let w = send_failure_warning(&[("turn", 2), ("path hq → turn", 9)]);
        assert!(
            w.contains("send 11 packets (turn: 2; path hq → turn: 9)"),
            "{w}"
        );
    }
}
