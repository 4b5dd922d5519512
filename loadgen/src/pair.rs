//! Both legs of a call driven together on one thread, with the offer and answer handed over in
//! process — the media path without the signalling, for tests and calibration runs.

use std::time::{Duration, Instant};

use reports::emodel::Codec;
use reports::record::MediaStats;

use crate::leg::{LegError, PeerConfig};
use crate::peer::Peer;

/// How often the legs are driven: a fixed tick keeps this helper simple (`sim run` wakes each leg
/// at its own deadlines instead).
const TICK: Duration = Duration::from_millis(1);
/// Media frame interval.
const FRAME: Duration = Duration::from_millis(20);

/// An agent leg and an anchor leg, each with its own TURN server address (the agent's may be an
/// impairment relay in front of the server).
#[derive(Debug)]
pub struct PairedCall {
    /// The agent's leg.
    pub agent: Peer,
    /// The anchor's leg.
    pub anchor: Peer,
}

/// A leg's error, with which side it was on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairError {
    /// `agent` or `anchor`.
    pub side: &'static str,
    /// What went wrong; `None` when the step simply did not finish in time.
    pub error: Option<LegError>,
    /// What was being done.
    pub step: &'static str,
}

impl PairedCall {
    /// Creates both legs and exchanges offer and answer; allocations start at once.
    pub fn new(agent: PeerConfig, anchor: PeerConfig) -> Result<Self, PairError> {
        let now = Instant::now();
        let fail = |side, error| PairError {
            side,
            error: Some(error),
            step: "create",
        };
        let mut agent = Peer::new(agent, 0x1000_0001, now).map_err(|e| fail("agent", e))?;
        let mut anchor = Peer::new(anchor, 0x2000_0002, now).map_err(|e| fail("anchor", e))?;
        let offer = agent.leg.offer();
        let answer = anchor
            .leg
            .answer(now, &offer)
            .map_err(|e| fail("anchor", e))?;
        agent
            .leg
            .accept(now, &answer)
            .map_err(|e| fail("agent", e))?;
        Ok(Self { agent, anchor })
    }

    /// Drives both legs until `done` holds or `limit` passes; `false` on timeout or a leg error.
    pub fn drive_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Peer, &Peer) -> bool,
    ) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            let now = Instant::now();
            self.agent.drive(now);
            self.anchor.drive(now);
            if done(&self.agent, &self.anchor) {
                return true;
            }
            if self.agent.leg.error.is_some() || self.anchor.leg.error.is_some() {
                return false;
            }
            std::thread::sleep(TICK);
        }
        false
    }

    fn failed(&self, step: &'static str) -> PairError {
        match (&self.agent.leg.error, &self.anchor.leg.error) {
            (Some(e), _) => PairError {
                side: "agent",
                error: Some(e.clone()),
                step,
            },
            (None, Some(e)) => PairError {
                side: "anchor",
                error: Some(e.clone()),
                step,
            },
            (None, None) => PairError {
                side: "agent",
                error: None,
                step,
            },
        }
    }

    /// Waits for both allocations, exchanges the relay candidates, and waits for both legs to
    /// connect (ICE and DTLS).
    pub fn connect(&mut self, limit: Duration) -> Result<(), PairError> {
        let gathered = self.drive_until(limit, |a, b| {
            a.leg.gathering_done() && b.leg.gathering_done()
        });
        for (side, peer) in [("agent", &self.agent), ("anchor", &self.anchor)] {
            if peer.leg.local_candidates().is_empty() {
                return Err(PairError {
                    side,
                    error: peer
                        .leg
                        .allocation_error()
                        .or_else(|| peer.leg.error.clone()),
                    step: "allocate",
                });
            }
        }
        if !gathered && (self.agent.leg.error.is_some() || self.anchor.leg.error.is_some()) {
            return Err(self.failed("allocate"));
        }
        let now = Instant::now();
        let (a, b) = (
            self.agent.leg.local_candidates().to_vec(),
            self.anchor.leg.local_candidates().to_vec(),
        );
        for c in b {
            self.agent
                .leg
                .add_remote_candidate(now, &c)
                .map_err(|e| PairError {
                    side: "agent",
                    error: Some(e),
                    step: "candidates",
                })?;
        }
        for c in a {
            self.anchor
                .leg
                .add_remote_candidate(now, &c)
                .map_err(|e| PairError {
                    side: "anchor",
                    error: Some(e),
                    step: "candidates",
                })?;
        }
        if !self.drive_until(limit, |a, b| {
            a.leg.times.connected.is_some() && b.leg.times.connected.is_some()
        }) {
            return Err(self.failed("connect"));
        }
        Ok(())
    }

    /// Sends 20 ms frames both ways for `duration`, then lets the last ones arrive.
    pub fn talk(&mut self, duration: Duration) {
        let start = Instant::now();
        let frames = u32::try_from(duration.as_millis() / FRAME.as_millis()).unwrap_or(u32::MAX);
        let mut sent = 0;
        while sent < frames {
            let now = Instant::now();
            if now >= start + FRAME * sent {
                self.agent.send_frame(now);
                self.anchor.send_frame(now);
                sent += 1;
            }
            self.agent.drive(now);
            self.anchor.drive(now);
            std::thread::sleep(TICK);
        }
        let expected = u64::from(frames);
        let _ = self.drive_until(Duration::from_millis(500), |a, b| {
            a.leg.meter.received() >= expected && b.leg.meter.received() >= expected
        });
    }

    /// Ends the call: closes both legs and returns the media figures, agent → anchor first.
    pub fn finish(mut self, codec: Codec) -> (MediaStats, MediaStats) {
        let now = Instant::now();
        self.agent.close(now);
        self.anchor.close(now);
        let to_anchor = self.anchor.leg.received_from(&self.agent.leg, codec);
        let to_agent = self.agent.leg.received_from(&self.anchor.leg, codec);
        (to_anchor, to_agent)
    }
}
