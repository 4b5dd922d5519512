//! TURN over a stream: TCP (RFC 8656 §3.1) or TLS over TCP, as `turn:HOST?transport=tcp` and
//! `turns:HOST` URLs ask. `rtc`'s TURN client writes and reads whole messages; on a stream the
//! application frames them: a STUN message carries its length in its header, and ChannelData
//! carries its length and is padded to a multiple of four bytes (RFC 8656 §12.5).
//!
//! Non-blocking throughout, so that hundreds of legs share one thread: the connection is opened
//! without waiting, and what cannot be written yet waits in a buffer until the socket is
//! writable.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use bytes::BytesMut;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

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
    conn: rustls::ClientConnection,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .finish()
    }
}

impl TlsSession {
    /// A client session for `server_name`, trusting `config`'s roots.
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: &str) -> Result<Self, String> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| format!("TLS server name {server_name:?}: {e}"))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        Ok(Self { conn })
    }
}

/// One TCP (or TLS) connection to a TURN server.
#[derive(Debug)]
pub struct StreamTransport {
    tcp: TcpStream,
    /// The TURN server it connects to.
    server: SocketAddr,
    tls: Option<TlsSession>,
    /// Received bytes not yet a whole frame (plaintext under TLS).
    inbound: Vec<u8>,
    /// Bytes not yet written (plain TCP only; rustls buffers its own).
    outbound: Vec<u8>,
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
            tls,
            inbound: Vec::new(),
            outbound: Vec::new(),
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
        !self.established
            || !self.outbound.is_empty()
            || self.tls.as_ref().is_some_and(|t| t.conn.wants_write())
    }

    /// Queues one frame (a STUN message or padded ChannelData) and writes what the socket takes.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(t) => t.conn.writer().write_all(frame)?,
            None => self.outbound.extend_from_slice(frame),
        }
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
        match &mut self.tls {
            Some(t) => {
                while t.conn.wants_write() {
                    match t.conn.write_tls(&mut self.tcp) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                while !self.outbound.is_empty() {
                    match self.tcp.write(&self.outbound) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            self.outbound.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads what the socket has and returns the whole frames received.
    pub fn recv(&mut self, frames: &mut Vec<BytesMut>) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let n = match &mut self.tls {
                Some(t) => match t.conn.read_tls(&mut self.tcp) {
                    Ok(0) => {
                        self.closed = true;
                        break;
                    }
                    Ok(_) => {
                        let state = t
                            .conn
                            .process_new_packets()
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        let mut plain = vec![0u8; state.plaintext_bytes_to_read()];
                        t.conn.reader().read_exact(&mut plain)?;
                        self.inbound.extend_from_slice(&plain);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                },
                None => match self.tcp.read(&mut buf) {
                    Ok(0) => {
                        self.closed = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                },
            };
            self.inbound.extend_from_slice(&buf[..n]);
        }
        // The handshake may have something to say (TLS) once bytes came in.
        self.flush()?;
        let mut start = 0;
        while let Some(len) = frame_len(&self.inbound[start..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            frames.push(BytesMut::from(&self.inbound[start..start + len]));
            start += len;
        }
        self.inbound.drain(..start);
        Ok(())
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
}
