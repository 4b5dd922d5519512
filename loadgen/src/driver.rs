//! The session's real-time edge: a [`Session`] (the sans-I/O core of one call) on real
//! sockets and the real clock, from async code. It opens the wires and TCP connections the
//! session asks for, feeds it what they receive as readiness says, sends what it has, and
//! wakes it at its deadlines — with the precise timer only for a media frame, whose pacing
//! the measurement depends on.

use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use reports::CallRecord;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::leg::LegError;
use crate::peer::Wires;
use crate::session::{Session, SessionEvent};

/// What one read from the signalling socket asks for (a TLS record is at most 16 KiB; a
/// signalling message is a few KiB).
const READ: usize = 4096;
/// The longest the edge sleeps when the session names no deadline.
const IDLE: Duration = Duration::from_millis(500);

type Dialing = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// What woke the edge.
enum Wake {
    Wires,
    Readable,
    Writable,
    Dialled(io::Result<TcpStream>),
    Timer,
    Hangup(bool),
}

/// The call's sockets: its leg's wires (registered for readiness), and its signalling
/// connection with what waits to be written to it.
#[derive(Default)]
struct Sockets {
    wires: Wires,
    /// Duplicates of the wires' sockets registered with tokio, for readiness only: the wires
    /// read and write through their own handles.
    readiness: Vec<AsyncFd<OwnedFd>>,
    tcp: Option<TcpStream>,
    dialing: Option<Dialing>,
    outgoing: Vec<u8>,
}

/// Runs `session` to its end on real sockets and returns its record; `hangup` becoming `true`
/// hangs a talking call up at once (the run is stopping).
pub async fn drive(mut session: Session, mut hangup: Option<watch::Receiver<bool>>) -> CallRecord {
    let mut s = Sockets::default();
    let mut buf = vec![0u8; READ];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                SessionEvent::OpenWires { kinds, replace } => {
                    let opened = s.wires.open(&kinds).and_then(|locals| {
                        s.readiness =
                            register(&s.wires).map_err(|e| LegError::Io(e.to_string()))?;
                        Ok(locals)
                    });
                    let ok = opened.is_ok();
                    session.handle_wires(Instant::now(), opened);
                    s.wires.send(&mut session);
                    if ok && replace {
                        // The old wires close once their releases are sent.
                        s.wires.close_all_but(kinds.len());
                        s.readiness = register(&s.wires).unwrap_or_default();
                    }
                }
                SessionEvent::Dial(addr) => {
                    s.drop_signalling();
                    s.dialing = Some(Box::pin(TcpStream::connect(addr)));
                }
                SessionEvent::DropSignalling => {
                    s.write_signalling(&mut session);
                    s.drop_signalling();
                }
                SessionEvent::Ended => {
                    s.wires.send(&mut session);
                    return session.record();
                }
            }
        }
        s.wires.send(&mut session);
        s.write_signalling(&mut session);
        let next = session.poll_timeout();
        // Protocol timers tolerate tokio's 1 ms timer; only a media frame needs the precise
        // one, so only it costs a wake-up of the timer thread.
        let frame = session
            .next_frame()
            .filter(|&f| next.is_none_or(|n| f <= n));
        let coarse = next.unwrap_or_else(|| Instant::now() + IDLE);
        let want_write = s.wires.wants_write(&session);
        let writing = !s.outgoing.is_empty();
        let Sockets {
            readiness,
            tcp,
            dialing,
            ..
        } = &mut s;
        let tcp = &*tcp;
        let wake = tokio::select! {
            () = ready(readiness, want_write) => Wake::Wires,
            _ = async {
                match tcp {
                    Some(t) => t.readable().await,
                    None => std::future::pending().await,
                }
            }, if tcp.is_some() => Wake::Readable,
            _ = async {
                match tcp {
                    Some(t) => t.writable().await,
                    None => std::future::pending().await,
                }
            }, if tcp.is_some() && writing => Wake::Writable,
            r = async {
                match dialing {
                    Some(d) => d.await,
                    None => std::future::pending().await,
                }
            }, if dialing.is_some() => Wake::Dialled(r),
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(coarse)), if frame.is_none() => Wake::Timer,
            () = crate::clock::sleep_until(frame.unwrap_or(coarse)), if frame.is_some() => Wake::Timer,
            changed = async {
                match &mut hangup {
                    Some(h) => h.changed().await.map(|()| *h.borrow()),
                    None => std::future::pending().await,
                }
            }, if hangup.is_some() => match changed {
                Ok(stop) => Wake::Hangup(stop),
                Err(_) => {
                    hangup = None;
                    Wake::Hangup(false)
                }
            },
        };
        let now = Instant::now();
        match wake {
            Wake::Wires => {
                s.wires.read(now, &mut session);
                session.handle_timeout(now);
            }
            Wake::Readable => s.read_signalling(now, &mut session, &mut buf),
            Wake::Writable => {}
            Wake::Dialled(r) => {
                s.dialing = None;
                match r {
                    Ok(tcp) => {
                        let _ = tcp.set_nodelay(true);
                        s.tcp = Some(tcp);
                        session.handle_signalling_open(now);
                    }
                    Err(e) => session.handle_signalling_error(now, e.to_string()),
                }
            }
            Wake::Timer => session.handle_timeout(now),
            Wake::Hangup(stop) => {
                if stop {
                    hangup = None;
                    session.hang_up(now);
                }
            }
        }
    }
}

impl Sockets {
    /// Writes what the session's signalling connection has ready, as far as the socket takes
    /// it now.
    fn write_signalling(&mut self, session: &mut Session) {
        while let Some(data) = session.poll_signalling_transmit() {
            self.outgoing.extend_from_slice(&data);
        }
        let Some(tcp) = &self.tcp else {
            self.outgoing.clear();
            return;
        };
        while !self.outgoing.is_empty() {
            match tcp.try_write(&self.outgoing) {
                Ok(n) => {
                    self.outgoing.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The connection is gone: the session hears of it as the peer's close.
                    self.outgoing.clear();
                    self.tcp = None;
                    session.handle_signalling_eof(Instant::now());
                    break;
                }
            }
        }
    }

    /// Reads what the signalling socket has into the session.
    fn read_signalling(&mut self, now: Instant, session: &mut Session, buf: &mut [u8]) {
        let Some(tcp) = &self.tcp else { return };
        loop {
            match tcp.try_read(buf) {
                Ok(0) => {
                    self.tcp = None;
                    return session.handle_signalling_eof(now);
                }
                Ok(n) => session.handle_signalling_input(now, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.tcp = None;
                    return session.handle_signalling_eof(now);
                }
            }
        }
    }

    fn drop_signalling(&mut self) {
        self.tcp = None;
        self.dialing = None;
        self.outgoing.clear();
    }
}

/// Registers the wires' sockets with the current tokio runtime, for readiness.
fn register(wires: &Wires) -> io::Result<Vec<AsyncFd<OwnedFd>>> {
    wires
        .fds()
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

/// Waits until a socket is readable (or writable, while a wire has bytes to write).
/// Readiness is cleared before the wires are read, so a datagram arriving during the read
/// raises it again and none is missed.
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
