//! Driving a [`Peer`] from async code: readiness of its socket and its own timers wake it.

use std::io;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::peer::Peer;

/// The longest a leg sleeps without being driven, whatever its timers say: `rtc` does not always
/// report its next deadline (../shared/notes/rtc-relay.md found setup slow when waking only at
/// `poll_timeout`), so a coarse tick guarantees progress.
const MAX_SLEEP: Duration = Duration::from_millis(10);

/// A peer with its socket registered for readiness.
#[derive(Debug)]
pub struct DrivenPeer {
    /// The leg.
    pub peer: Peer,
    /// A clone of the peer's socket registered with tokio, for readiness only: the peer reads
    /// through its own handle.
    readiness: UdpSocket,
}

impl DrivenPeer {
    /// Registers the peer's socket with the current tokio runtime.
    pub fn new(peer: Peer) -> io::Result<Self> {
        let socket = peer.socket().try_clone()?;
        Ok(Self {
            peer,
            readiness: UdpSocket::from_std(socket)?,
        })
    }

    /// Drives the peer until `done` holds, a leg error occurs, or `deadline` passes; `true` when
    /// `done` held. Also returns `false` at `also` (a media frame due) without driving the leg:
    /// the caller sends the frame and the next call's first drive flushes it, so each wake-up
    /// drives the leg once.
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
            if self.peer.error.is_some() || now >= deadline || also.is_some_and(|a| now >= a) {
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
                ready = self.readiness.readable() => {
                    now = Instant::now();
                    if ready.is_ok() {
                        // Read everything, then tell tokio the socket is drained. It clears the
                        // readiness only if no new datagram was signalled since (readiness
                        // ticks), so none is missed.
                        self.peer.drive(now);
                        let _ = self.readiness.try_io(Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
                    }
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
