//! TURN over a stream: TCP (RFC 8656 §3.1) or TLS over TCP, as `turn:HOST?transport=tcp` and
//! `turns:HOST` URLs ask. `rtc`'s TURN client writes and reads whole messages; on a stream the
//! application frames them: a STUN message carries its length in its header, and ChannelData
//! carries its length and is padded to a multiple of four bytes (RFC 8656 §12.5).
//!
//! [`TurnStream`] is the connection without its socket (framing and TLS over the bytes it is
//! given), as virtual time drives it; [`StreamTransport`] is the real-time edge on a socket,
//! non-blocking throughout, so that hundreds of legs share one thread: the connection is opened
//! without waiting, and what cannot be written yet waits in a buffer until the socket is
//! writable.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use bytes::BytesMut;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::signalling::Plaintext;

/// Why a TURN connection ended when the server closed it (the wording call records quote).
pub const CLOSED_BY_SERVER: &str = "the TURN server closed the connection";

/// The length of the first whole STUN message or ChannelData frame at the start of `buf`
/// (padding included), `None` while it is incomplete, `Err` when the bytes are neither.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if buf.len() < 4 {
        return Ok(None);
    }
    let length = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let whole = match first >> 6 {
        // STUN: a 20-byte header, then attributes (always a multiple of four).
        0b00 => 20 + length,
        // ChannelData: a 4-byte header, the data, padding to four on a stream.
        0b01 => 4 + length.next_multiple_of(4),
        _ => {
            return Err(format!(
                "neither STUN nor ChannelData: first byte {first:#04x}"
            ));
        }
    };
    Ok((buf.len() >= whole).then_some(whole))
}

/// The TLS side of a `turns:` connection.
pub struct TlsSession {
    conn: Plaintext,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.0.is_handshaking())
            .finish()
    }
}

impl TlsSession {
    /// A client session for `server_name`, trusting `config`'s roots.
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: &str) -> Result<Self, String> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| format!("TLS server name {server_name:?}: {e}"))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        Ok(Self {
            conn: Plaintext(conn.into()),
        })
    }
}

/// One TURN connection over a stream without its socket: frames in, frames out, TLS (when
/// `turns:`) in between, driven by the bytes its caller passes (the real-time edge is
/// [`StreamTransport`]; virtual time moves the bytes over a simulated path).
#[derive(Debug)]
pub struct TurnStream {
    tls: Option<TlsSession>,
    /// Received bytes not yet a whole frame (plaintext under TLS).
    inbound: Vec<u8>,
    /// Frames not yet taken by [`Self::poll_transmit`] (plain TCP only; rustls buffers its
    /// own).
    outbound: Vec<u8>,
}

impl TurnStream {
    /// A connection's framing; `tls` wraps it in TLS.
    pub fn new(tls: Option<TlsSession>) -> Self {
        Self {
            tls,
            inbound: Vec::new(),
            outbound: Vec::new(),
        }
    }

    /// Queues one frame (a STUN message or padded ChannelData).
    ///
    /// # Errors
    /// The TLS session can take no more (it failed).
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(t) => t.conn.write_all(frame),
            None => {
                self.outbound.extend_from_slice(frame);
                Ok(())
            }
        }
    }

    /// Whether bytes wait to go on the wire.
    pub fn wants_write(&self) -> bool {
        !self.outbound.is_empty() || self.tls.as_ref().is_some_and(|t| t.conn.0.wants_write())
    }

    /// The bytes to put on the wire next (TLS records, or the frames themselves), if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        match &mut self.tls {
            Some(t) => t.conn.transmit(),
            None => (!self.outbound.is_empty()).then(|| std::mem::take(&mut self.outbound)),
        }
    }

    /// Bytes that arrived, cut anywhere: appends the whole frames they complete to `frames`.
    ///
    /// # Errors
    /// The TLS records are bad, or the plaintext is neither STUN nor ChannelData.
    pub fn handle_input(&mut self, data: &[u8], frames: &mut Vec<BytesMut>) -> io::Result<()> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        match &mut self.tls {
            Some(t) => {
                t.conn.receive(data).map_err(|e| invalid(e.to_string()))?;
                let mut buf = [0u8; 4096];
                loop {
                    match t.conn.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => self.inbound.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            None => self.inbound.extend_from_slice(data),
        }
        let mut start = 0;
        while let Some(len) = frame_len(&self.inbound[start..]).map_err(invalid)? {
            frames.push(BytesMut::from(&self.inbound[start..start + len]));
            start += len;
        }
        self.inbound.drain(..start);
        Ok(())
    }
}

/// One TCP (or TLS) connection to a TURN server: a [`TurnStream`] on a non-blocking socket.
#[derive(Debug)]
pub struct StreamTransport {
    tcp: TcpStream,
    /// The TURN server it connects to.
    server: SocketAddr,
    stream: TurnStream,
    /// Bytes taken from `stream` and not yet written.
    unwritten: Vec<u8>,
    /// Whether the connection is known to be established.
    established: bool,
    /// Whether the server closed the connection.
    pub closed: bool,
}

impl StreamTransport {
    /// Starts connecting to `server` without waiting; `tls` wraps the stream in TLS.
    pub fn connect(server: SocketAddr, tls: Option<TlsSession>) -> io::Result<Self> {
        let family = if server.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        let fd: OwnedFd = rustix::net::socket_with(
            family,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        match rustix::net::connect(&fd, &server) {
            Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        let tcp = TcpStream::from(fd);
        tcp.set_nodelay(true)?;
        Ok(Self {
            tcp,
            server,
            stream: TurnStream::new(tls),
            unwritten: Vec::new(),
            established: false,
            closed: false,
        })
    }

    /// The local address (the base of the relay candidate).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The TURN server it connects to (known before the connection is).
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The socket, for readiness.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.tcp.as_fd()
    }

    /// Whether bytes wait for the socket to become writable (or the connection to open).
    pub fn wants_write(&self) -> bool {
        !self.established || !self.unwritten.is_empty() || self.stream.wants_write()
    }

    /// Queues one frame (a STUN message or padded ChannelData) and writes what the socket takes.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.stream.send(frame)?;
        self.flush()
    }

    /// Writes what the socket takes now.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.established {
            if let Some(e) = self.tcp.take_error()? {
                return Err(e);
            }
            if self.tcp.peer_addr().is_err() {
                return Ok(()); // still connecting
            }
            self.established = true;
        }
        while let Some(bytes) = self.stream.poll_transmit() {
            self.unwritten.extend_from_slice(&bytes);
        }
        while !self.unwritten.is_empty() {
            match self.tcp.write(&self.unwritten) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.unwritten.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the socket has and returns the whole frames received.
    pub fn recv(&mut self, frames: &mut Vec<BytesMut>) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            match self.tcp.read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => self.stream.handle_input(&buf[..n], frames)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        // The handshake may have something to say (TLS) once bytes came in.
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_stun_and_padded_channel_data() {
        // A STUN header announcing 8 bytes of attributes: 28 bytes in all.
        let mut stun = vec![0x00, 0x01, 0x00, 0x08];
        stun.resize(28, 0);
        assert_eq!(frame_len(&stun), Ok(Some(28)));
        assert_eq!(frame_len(&stun[..27]), Ok(None));
        // ChannelData of 5 bytes is padded to 8 on a stream: 12 bytes in all.
        let chan = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        assert_eq!(frame_len(&chan), Ok(Some(12)));
        assert_eq!(frame_len(&chan[..9]), Ok(None));
        assert_eq!(frame_len(&[]), Ok(None));
        assert!(frame_len(&[0x80, 0, 0, 0]).is_err());
    }

    /// A STUN header announcing 8 bytes of attributes (28 bytes), then ChannelData of 5 bytes
    /// padded to 8 (12 bytes).
    fn two_frames() -> Vec<u8> {
        let mut stun = vec![0x00, 0x01, 0x00, 0x08];
        stun.resize(28, 7);
        stun.extend_from_slice(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        stun
    }

    #[test]
    fn a_plain_stream_gives_whole_frames_however_it_is_cut() {
        let bytes = two_frames();
        for cut in 1..bytes.len() {
            let mut stream = TurnStream::new(None);
            let mut frames = Vec::new();
            for chunk in bytes.chunks(cut) {
                stream.handle_input(chunk, &mut frames).unwrap();
            }
            let lens: Vec<usize> = frames.iter().map(BytesMut::len).collect();
            assert_eq!(lens, [28, 12], "cut every {cut} bytes");
            assert_eq!(frames.concat(), bytes);
        }
        // What it sends goes out as it was given.
        let mut stream = TurnStream::new(None);
        assert!(!stream.wants_write());
        stream.send(&bytes[..28]).unwrap();
        stream.send(&bytes[28..]).unwrap();
        assert!(stream.wants_write());
        assert_eq!(stream.poll_transmit(), Some(bytes.clone()));
        assert_eq!(stream.poll_transmit(), None);
        // Bytes that are neither STUN nor ChannelData fail the connection.
        let mut frames = Vec::new();
        assert!(stream.handle_input(&[0x80, 0, 0, 0], &mut frames).is_err());
    }

    #[test]
    fn a_tls_stream_carries_frames_both_ways_over_bytes_alone() {
        let provider = crate::entropy::Entropy::Seeded(3).provider().unwrap();
        let (server_config, root) = crate::entropy::tls_server("turn.test", &provider).unwrap();
        let client_config =
            crate::signalling::tls_client_config(std::slice::from_ref(&root)).unwrap();
        let tls = TlsSession::new(client_config, "turn.test").unwrap();
        let mut client = TurnStream::new(Some(tls));
        let server = rustls::ServerConnection::new(server_config).unwrap();
        let mut server = Plaintext(server.into());
        let bytes = two_frames();
        // Sent before the handshake: held until it is done.
        client.send(&bytes).unwrap();
        let (mut received, mut frames) = (Vec::new(), Vec::new());
        // The handshake and the data, in 5-byte pieces each way.
        for _ in 0..10 {
            while let Some(records) = client.poll_transmit() {
                for piece in records.chunks(5) {
                    server.receive(piece).unwrap();
                }
            }
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = server.read(&mut buf) {
                received.extend_from_slice(&buf[..n]);
            }
            if received.len() == bytes.len() && frames.is_empty() {
                server.write_all(&bytes).unwrap();
            }
            while let Some(records) = server.transmit() {
                for piece in records.chunks(5) {
                    client.handle_input(piece, &mut frames).unwrap();
                }
            }
        }
        assert_eq!(received, bytes, "the server read the frames in plaintext");
        let lens: Vec<usize> = frames.iter().map(BytesMut::len).collect();
        assert_eq!(lens, [28, 12], "the client framed the server's plaintext");
        // Bad records fail the connection.
        assert!(
            client
                .handle_input(&[0x17, 3, 3, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9], &mut frames)
                .is_err()
        );
    }
}
