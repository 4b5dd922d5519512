//! Driving a [`Peer`] from async code: readiness of its socket and its own timers wake it.

use std::future::poll_fn;
use std::io;
use std::os::fd::OwnedFd;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::peer::Peer;

/// The longest a leg sleeps without being driven, whatever its timers say: `rtc`'s TURN client
/// does not always report its next deadline (../shared/notes/rtc-relay.md found setup slow when waking only at
/// `poll_timeout`), so a coarse tick guarantees progress.
const MAX_SLEEP: Duration = Duration::from_millis(10);

/// A peer with its sockets registered for readiness.
#[derive(Debug)]
pub struct DrivenPeer {
    /// The leg.
    pub peer: Peer,
    /// Duplicates of the peer's sockets registered with tokio, for readiness only: the peer
    /// reads and writes through its own handles.
    readiness: Vec<AsyncFd<OwnedFd>>,
}

impl DrivenPeer {
    /// Registers the peer's sockets with the current tokio runtime.
    pub fn new(peer: Peer) -> io::Result<Self> {
        let readiness = Self::register(&peer)?;
        Ok(Self { peer, readiness })
    }

    /// Starts an ICE restart on the leg ([`Peer::restart_ice`]) with allocations on `turn`,
    /// and registers its new sockets; returns the restart's offer.
    pub fn restart_ice(
        &mut self,
        now: Instant,
        turn: Vec<crate::leg::TurnCredentials>,
    ) -> Result<String, crate::leg::LegError> {
        let offer = self.peer.restart_ice(now, turn)?;
        self.readiness =
            Self::register(&self.peer).map_err(|e| crate::leg::LegError::Io(e.to_string()))?;
        Ok(offer)
    }

    fn register(peer: &Peer) -> io::Result<Vec<AsyncFd<OwnedFd>>> {
        peer.fds()
            .into_iter()
            .map(|fd| {
                // Deprecated because an arbitrary `AsRawFd` may be closed under the registration;
                // an `OwnedFd` it owns cannot be (tokio#8587), and `register_with_interest`, the
                // replacement, is `unsafe`, which this crate forbids.
                #[allow(deprecated)]
                AsyncFd::with_interest(
                    fd.try_clone_to_owned()?,
                    Interest::READABLE | Interest::WRITABLE,
                )
            })
            .collect()
    }

    /// Waits until a socket is readable (or writable, while the peer has bytes to write).
    /// Readiness is cleared before the peer drains the sockets, so a datagram arriving during
    /// the drain raises it again and none is missed.
    async fn ready(readiness: &[AsyncFd<OwnedFd>], write: bool) {
        poll_fn(|cx| {
            let mut ready = false;
            for fd in readiness {
                if let Poll::Ready(Ok(mut guard)) = fd.poll_read_ready(cx) {
                    guard.clear_ready();
                    ready = true;
                }
                if write && let Poll::Ready(Ok(mut guard)) = fd.poll_write_ready(cx) {
                    guard.clear_ready();
                    ready = true;
                }
            }
            if ready {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Drives the peer until `done` holds, a leg error occurs, or `deadline` passes; `true` when
    /// `done` held. Also returns `false` at `also` (a media frame due) without driving the leg:
    /// the caller sends the frame (out at once) and the next call's first drive reads the
    /// sockets, so each wake-up drives the leg once.
    pub async fn drive_until(
        &mut self,
        deadline: Instant,
        also: Option<Instant>,
        mut done: impl FnMut(&Peer) -> bool,
    ) -> bool {
        let mut now = Instant::now();
        self.peer.drive(now);
        loop {
            if done(&self.peer) {
                return true;
            }
            if self.peer.leg.error.is_some() || now >= deadline || also.is_some_and(|a| now >= a) {
                return false;
            }
            // Protocol timers and the deadline tolerate tokio's 1 ms timer; only a media frame
            // needs the precise one, so only it costs a wake-up of the timer thread. While media
            // flows, the frames drive the leg every 20 ms: no coarse tick on top.
            let mut coarse = also.unwrap_or(now + MAX_SLEEP).min(deadline);
            if let Some(t) = self.peer.poll_timeout() {
                coarse = coarse.min(t.max(now));
            }
            let frame = also.filter(|&a| a <= coarse);
            tokio::select! {
                () = Self::ready(&self.readiness, self.peer.wants_write()) => {
                    now = Instant::now();
                    self.peer.drive(now);
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(coarse)), if frame.is_none() => {
                    now = Instant::now();
                    self.peer.drive(now);
                }
                () = crate::clock::sleep_until(frame.unwrap_or(now)), if frame.is_some() => {
                    now = Instant::now();
                }
            }
        }
    }
}
