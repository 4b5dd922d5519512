//! TCP and TLS connections as the sans-I/O core sees them: the byte stream cut into STUN
//! messages and ChannelData (RFC 8656 §12.5), the connection limits per source address and in
//! total, the bytes of partial frames held for all of them, and the idle timeout of a connection
//! that holds no allocation.
//!
//! The table lives inside [`Server`](crate::Server); the edge reports a connection with
//! [`Server::handle_stream_opened`](crate::Server::handle_stream_opened) (which may refuse
//! it), its bytes with [`Server::handle_stream_data`](crate::Server::handle_stream_data) and
//! its end with [`Server::handle_connection_closed`](crate::Server::handle_connection_closed),
//! and closes it when the core says [`Event::CloseStream`](crate::Event::CloseStream).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use crate::server::FiveTuple;

/// Why a new TCP/TLS connection was refused at once (`turn_streams_refused_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum StreamRefusal {
    /// Its source address already holds `max_streams_per_source` connections.
    PerSource,
    /// The server already holds `max_streams` connections.
    Total,
    /// The `drop_streams` fault is on.
    Fault,
}

impl StreamRefusal {
    /// Every reason, in metrics order.
    pub const ALL: [Self; 3] = [Self::PerSource, Self::Total, Self::Fault];

    /// The metrics label.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::PerSource => "per_source",
            Self::Total => "total",
            Self::Fault => "fault",
        }
    }
}

/// Why the core closed a TCP/TLS connection (`turn_streams_closed_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum StreamClose {
    /// It held no allocation for `stream_idle_timeout`.
    Idle,
    /// Its bytes were not STUN/ChannelData framing; the replies it was owed went first.
    Framing,
    /// Its partial frame did not fit in `stream_buffer_budget`, the bytes held for all
    /// connections.
    Buffer,
    /// The `drop_streams` fault was turned on.
    Fault,
}

impl StreamClose {
    /// Every reason, in metrics order.
    pub const ALL: [Self; 4] = [Self::Idle, Self::Framing, Self::Buffer, Self::Fault];

    /// The metrics label.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Framing => "framing",
            Self::Buffer => "buffer",
            Self::Fault => "fault",
        }
    }
}

/// What the per-source limit counts as one source: an IPv4 address (IPv4-mapped IPv6 too), or
/// an IPv6 /64 — the prefix one host or one site's LAN is given, so that a host cannot step
/// round the limit by drawing new addresses from it.
#[must_use]
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// One open connection.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    /// The bytes of a frame not yet complete.
    pub(crate) partial: Vec<u8>,
    /// When it is closed if it still holds no allocation; `None` while it holds one.
    pub(crate) idle_at: Option<Instant>,
    /// The core asked the edge to close it; its bytes are no longer read.
    pub(crate) closing: bool,
}

/// Every open connection, counted per source address, with their idle deadlines.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    pub(crate) open: HashMap<FiveTuple, Stream>,
    per_source: HashMap<IpAddr, u32>,
    /// Idle deadlines in the order they fall: each is `now + stream_idle_timeout` when pushed,
    /// with `now` never going back, so the queue stays sorted. An entry whose stream has gone,
    /// holds an allocation or has a later deadline is stale and skipped when it falls due.
    idle: VecDeque<(Instant, FiveTuple)>,
    /// Bytes held in `partial` over all connections.
    pub(crate) buffered: usize,
}

impl Streams {
    /// Connections open from `ip`'s source (see [`source`]).
    pub(crate) fn open_from(&self, ip: IpAddr) -> u32 {
        self.per_source.get(&source(ip)).copied().unwrap_or(0)
    }

    /// Records a new connection whose idle deadline is `idle_at`.
    pub(crate) fn insert(&mut self, ft: FiveTuple, idle_at: Instant) {
        if let Some(old) = self.open.remove(&ft) {
            // The edge never reports the same 5-tuple twice; a stale one is replaced whole.
            self.buffered -= old.partial.len();
        } else {
            *self.per_source.entry(source(ft.client.ip())).or_default() += 1;
        }
        self.open.insert(
            ft,
            Stream {
                idle_at: Some(idle_at),
                ..Stream::default()
            },
        );
        self.push_idle(idle_at, ft);
    }

    /// Forgets a connection the edge has closed.
    pub(crate) fn remove(&mut self, ft: &FiveTuple) {
        let Some(s) = self.open.remove(ft) else {
            return;
        };
        self.buffered -= s.partial.len();
        let ip = source(ft.client.ip());
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }

    /// Stops or restarts the idle clock of `ft` (an allocation was made on it, or ended).
    pub(crate) fn set_idle(&mut self, ft: FiveTuple, idle_at: Option<Instant>) {
        if let Some(s) = self.open.get_mut(&ft) {
            s.idle_at = idle_at;
            if let Some(at) = idle_at {
                self.push_idle(at, ft);
            }
        }
    }

    /// Marks `ft` closing and frees its partial frame; false when it was gone or closing already.
    pub(crate) fn mark_closing(&mut self, ft: &FiveTuple) -> bool {
        match self.open.get_mut(ft) {
            Some(s) if !s.closing => {
                s.closing = true;
                s.idle_at = None;
                self.buffered -= s.partial.len();
                s.partial = Vec::new();
                true
            }
            _ => false,
        }
    }

    /// The earliest idle deadline (possibly stale: an early wake-up is harmless).
    pub(crate) fn next_idle(&self) -> Option<Instant> {
        self.idle.front().map(|(at, _)| *at)
    }

    /// Takes the next connection whose idle deadline has come by `now`.
    pub(crate) fn pop_idle(&mut self, now: Instant) -> Option<FiveTuple> {
        while let Some(&(at, ft)) = self.idle.front() {
            if at > now {
                return None;
            }
            self.idle.pop_front();
            if self.open.get(&ft).is_some_and(|s| s.idle_at == Some(at)) {
                return Some(ft);
            }
        }
        None
    }

    fn push_idle(&mut self, at: Instant, ft: FiveTuple) {
        self.idle.push_back((at, ft));
        // Connections that open and close quickly leave stale entries until their deadline:
        // keep the queue within a small multiple of the live connections (amortised O(1)).
        if self.idle.len() > 2 * self.open.len() + 64 {
            let open = &self.open;
            self.idle
                .retain(|(at, ft)| open.get(ft).is_some_and(|s| s.idle_at == Some(*at)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_64_is_one_source_and_a_mapped_ipv4_is_its_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source(a), source(b));
        assert_ne!(source(a), source(c));
        assert_eq!(source(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source(v4), v4);
    }
}
