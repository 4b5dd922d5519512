//! A media [`Leg`] on real sockets, in real time: the edge that opens each of the leg's wires
//! (a UDP socket on loopback, or a TCP/TLS stream to a TURN server, framed here), reads them
//! into the leg, and sends what it gives. Driven from async code by [`crate::driver`], or
//! polled by hand in tests.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use bytes::BytesMut;

use crate::leg::{Leg, LegError, PeerConfig, TurnCredentials, TurnTransport, WireKind};
use crate::turn_stream::{StreamTransport, TlsSession};

/// How the leg reaches its remote or its TURN server.
#[derive(Debug)]
enum Wire {
    Udp(UdpSocket),
    Stream(Box<StreamTransport>),
}

impl Wire {
    /// Opens the socket `kind` needs; returns it with its local end.
    fn open(kind: &WireKind) -> Result<(Self, SocketAddr), LegError> {
        let io = |e: io::Error| LegError::Io(e.to_string());
        let udp = |to: SocketAddr| -> Result<(Self, SocketAddr), LegError> {
            let socket = UdpSocket::bind(loopback_for(to)).map_err(io)?;
            socket.set_nonblocking(true).map_err(io)?;
            let local = socket.local_addr().map_err(io)?;
            Ok((Self::Udp(socket), local))
        };
        match kind {
            WireKind::Host => udp(SocketAddr::from(([127, 0, 0, 1], 0))),
            WireKind::Turn(t) => match &t.transport {
                TurnTransport::Udp => udp(t.server),
                TurnTransport::Tcp | TurnTransport::Tls { .. } => {
                    let tls = match &t.transport {
                        TurnTransport::Tls {
                            server_name,
                            config,
                        } => Some(
                            TlsSession::new(config.clone(), server_name).map_err(LegError::Io)?,
                        ),
                        _ => None,
                    };
                    let stream = StreamTransport::connect(t.server, tls).map_err(io)?;
                    let local = stream.local_addr().map_err(io)?;
                    Ok((Self::Stream(Box::new(stream)), local))
                }
            },
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Udp(s) => s.as_fd(),
            Self::Stream(s) => s.fd(),
        }
    }
}

/// Opens a wire for each of `kinds`: their sockets and local ends.
fn open_all(kinds: &[WireKind]) -> Result<(Vec<Wire>, Vec<SocketAddr>), LegError> {
    kinds
        .iter()
        .map(Wire::open)
        .collect::<Result<Vec<_>, _>>()
        .map(|w| w.into_iter().unzip())
}

fn loopback_for(server: SocketAddr) -> SocketAddr {
    if server.is_ipv4() {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    }
}

/// What the wires move datagrams in and out of: a [`Leg`], or a session owning one
/// ([`crate::session::Session`]).
pub trait LegIo {
    /// A datagram (or stream frame) wire `wire` received from `from`.
    fn handle_datagram(&mut self, now: Instant, wire: usize, from: SocketAddr, data: BytesMut);
    /// Wire `wire` failed.
    fn handle_wire_error(&mut self, wire: usize, why: &str);
    /// Whether wire `wire` has failed.
    fn wire_failed(&self, wire: usize) -> bool;
    /// The next datagram to send.
    fn poll_transmit(&mut self) -> Option<crate::leg::Transmit>;
}

/// Both take the wires' datagrams with methods of the same names.
macro_rules! leg_io {
    ($t:ty) => {
        impl LegIo for $t {
            fn handle_datagram(
                &mut self,
                now: Instant,
                wire: usize,
                from: SocketAddr,
                data: BytesMut,
            ) {
                Self::handle_datagram(self, now, wire, from, data);
            }

            fn handle_wire_error(&mut self, wire: usize, why: &str) {
                Self::handle_wire_error(self, wire, why);
            }

            fn wire_failed(&self, wire: usize) -> bool {
                Self::wire_failed(self, wire)
            }

            fn poll_transmit(&mut self) -> Option<crate::leg::Transmit> {
                Self::poll_transmit(self)
            }
        }
    };
}

leg_io!(Leg);
leg_io!(crate::session::Session);

/// A leg's wires by number, on real sockets; `None` once closed (replaced by a restart).
#[derive(Debug, Default)]
pub struct Wires {
    wires: Vec<Option<Wire>>,
    buf: Vec<u8>,
}

impl Wires {
    /// Opens a wire of each of `kinds` after those there are: their local ends.
    pub fn open(&mut self, kinds: &[WireKind]) -> Result<Vec<SocketAddr>, LegError> {
        let (wires, locals) = open_all(kinds)?;
        self.wires.extend(wires.into_iter().map(Some));
        Ok(locals)
    }

    /// Closes every wire but the last `keep` (those an ICE restart replaced).
    pub fn close_all_but(&mut self, keep: usize) {
        let n = self.wires.len().saturating_sub(keep);
        for w in &mut self.wires[..n] {
            *w = None;
        }
    }

    /// The open wires' sockets, for readiness: [`Self::read`] whenever one is readable (or
    /// writable, while [`Self::wants_write`]).
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.wires.iter().flatten().map(Wire::fd).collect()
    }

    /// Whether a stream to a TURN server waits to be writable.
    pub fn wants_write(&self, leg: &impl LegIo) -> bool {
        self.wires.iter().enumerate().any(|(i, w)| match w {
            Some(Wire::Stream(s)) => !leg.wire_failed(i) && s.wants_write(),
            _ => false,
        })
    }

    /// Reads what the sockets have into `leg`.
    pub fn read(&mut self, now: Instant, leg: &mut impl LegIo) {
        if self.buf.is_empty() {
            self.buf = vec![0u8; 2048];
        }
        for (i, wire) in self.wires.iter_mut().enumerate() {
            let Some(wire) = wire else { continue };
            match wire {
                Wire::Udp(socket) => loop {
                    match socket.recv_from(&mut self.buf) {
                        Ok((n, from)) => {
                            leg.handle_datagram(now, i, from, BytesMut::from(&self.buf[..n]));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                        Err(e) => {
                            leg.handle_wire_error(i, &e.to_string());
                            break;
                        }
                    }
                },
                Wire::Stream(stream) => {
                    let mut frames = Vec::new();
                    let failed = match stream.recv(&mut frames) {
                        Err(e) => Some(e.to_string()),
                        Ok(()) if stream.closed => {
                            Some(crate::turn_stream::CLOSED_BY_SERVER.into())
                        }
                        Ok(()) => None,
                    };
                    let server = stream.server();
                    for frame in frames {
                        leg.handle_datagram(now, i, server, frame);
                    }
                    if let Some(why) = failed {
                        leg.handle_wire_error(i, &why);
                    }
                }
            }
        }
    }

    /// Sends what `leg` has ready on the wires it names.
    pub fn send(&mut self, leg: &mut impl LegIo) {
        while let Some(t) = leg.poll_transmit() {
            let Some(Some(wire)) = self.wires.get_mut(t.wire) else {
                continue;
            };
            match wire {
                Wire::Udp(socket) => {
                    let _ = socket.send_to(&t.data, t.to);
                }
                Wire::Stream(stream) => {
                    if let Err(e) = stream.send(&t.data) {
                        leg.handle_wire_error(t.wire, &e.to_string());
                    }
                }
            }
        }
        for (i, wire) in self.wires.iter_mut().enumerate() {
            if let Some(Wire::Stream(stream)) = wire
                && let Err(e) = stream.flush()
            {
                leg.handle_wire_error(i, &e.to_string());
            }
        }
    }
}

/// A WebRTC peer with one Opus-like audio track: a [`Leg`] and its sockets.
pub struct Peer {
    /// The leg: its state, milestones, meter and failure.
    pub leg: Leg,
    wires: Wires,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("leg", &self.leg)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// Opens the leg's sockets and starts it ([`Leg::new`]): a TURN allocation on every
    /// configured server (a relay-only leg), or a UDP socket on loopback offered as a host
    /// candidate (a host leg).
    pub fn new(config: PeerConfig, ssrc: u32, now: Instant) -> Result<Self, LegError> {
        // Before the leg's first frame is due (a no-op once the process has the loop).
        crate::audio::prepare();
        let mut wires = Wires::default();
        let locals = wires.open(&Leg::wires(&config))?;
        let leg = Leg::new(config, ssrc, now, crate::clock::unix_now(), &locals)?;
        let mut peer = Self { leg, wires };
        peer.send();
        Ok(peer)
    }

    /// The leg's sockets, for readiness: [`Self::drive`] whenever one is readable, or writable
    /// while [`Self::wants_write`].
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.wires.fds()
    }

    /// Whether a stream to a TURN server waits to be writable.
    pub fn wants_write(&self) -> bool {
        self.wires.wants_write(&self.leg)
    }

    /// Starts an ICE restart ([`Leg::restart_ice`]) with allocations on `turn` from new
    /// sockets; the old ones close once their releases are sent, so [`Self::fds`] changes.
    pub fn restart_ice(
        &mut self,
        now: Instant,
        turn: Vec<TurnCredentials>,
    ) -> Result<String, LegError> {
        let kinds: Vec<WireKind> = turn.iter().cloned().map(WireKind::Turn).collect();
        let locals = self.wires.open(&kinds)?;
        let offer = self.leg.restart_ice(now, turn, &locals)?;
        self.send();
        self.wires.close_all_but(kinds.len());
        Ok(offer)
    }

    /// Sends the frame scheduled for `due` (now, late by `now − due`), at once.
    pub fn send_frame_due(&mut self, now: Instant, due: Instant) {
        self.leg.send_frame_due(now, due);
        self.send();
    }

    /// Sends one 20 ms frame, stamped with its send instant and sequence, at once.
    pub fn send_frame(&mut self, now: Instant) {
        self.leg.send_frame(now);
        self.send();
    }

    /// Reads what the sockets have, runs due timers, and sends what is ready. Call it whenever
    /// a socket may be readable (or writable, see [`Self::wants_write`]) and at
    /// [`Self::poll_timeout`].
    pub fn drive(&mut self, now: Instant) {
        self.wires.read(now, &mut self.leg);
        self.leg.handle_timeout(now);
        self.send();
    }

    /// When [`Self::drive`] must run next at the latest.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.leg.poll_timeout()
    }

    /// Closes the media plane and releases the allocations ([`Leg::close`]).
    pub fn close(&mut self, now: Instant) {
        self.leg.close(now);
        self.send();
    }

    /// Sends what the leg has ready on the wires it names.
    fn send(&mut self) {
        self.wires.send(&mut self.leg);
    }
}
