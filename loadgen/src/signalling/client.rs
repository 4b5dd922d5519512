//! The signalling client's real-time edge: a [`Connection`] over a TCP socket and the real
//! clock, driven from async code.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    Connection, Endpoint, Event, Invite, InviteAnswer, SignallingError, host_port,
    tls_client_config,
};

/// What one read from the socket asks for (a TLS record is at most 16 KiB; a signalling
/// message is a few KiB).
const READ: usize = 4096;

/// A connected signalling client.
#[derive(Debug)]
pub struct SignallingClient {
    connection: Connection,
    tcp: TcpStream,
    /// `bye` requests the server sent (it ended the call), answered `{}` as the library does.
    pub remote_byes: u32,
}

impl SignallingClient {
    /// Opens the WebSocket, retrying up to `attempts` times within `timeout` in all (the CCP
    /// tries 3 times within 10 s).
    pub async fn connect(
        endpoint: &Endpoint,
        timeout: Duration,
        attempts: u32,
    ) -> Result<Self, SignallingError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no attempt");
        for attempt in 0..attempts.max(1) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, Self::connect_once(endpoint)).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("timed out after {timeout:?}"),
            }
            // Back off a little between tries, within the deadline.
            let pause = Duration::from_millis(250 * u64::from(attempt + 1));
            if tokio::time::Instant::now() + pause < deadline {
                tokio::time::sleep(pause).await;
            }
        }
        Err(SignallingError::Connect(last))
    }

    async fn connect_once(endpoint: &Endpoint) -> Result<Self, String> {
        let (host, _) = host_port(&endpoint.url)?;
        let config = tls_client_config(&endpoint.roots)?;
        let tcp = TcpStream::connect(endpoint.addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let connection = Connection::new(&endpoint.url, &host, config).map_err(connect_reason)?;
        let mut client = Self {
            connection,
            tcp,
            remote_byes: 0,
        };
        client
            .drive(|e| matches!(e, Event::Connected).then_some(()))
            .await
            .map_err(connect_reason)?;
        Ok(client)
    }

    /// Sends a request and waits up to `timeout` for its response.
    pub async fn call(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, SignallingError> {
        let id = self
            .connection
            .request(Instant::now(), method, params, timeout)?;
        self.drive(|e| match e {
            Event::Response { id: got, result } if got == id => Some(result),
            _ => None,
        })
        .await?
    }

    /// Sends a WebSocket ping and waits up to `timeout` for its pong, answering what the
    /// server asks meanwhile (see [`Connection::ping`]). The server's WebSocket answers pings
    /// by itself, as every browser's does.
    pub async fn keepalive(&mut self, timeout: Duration) -> Result<(), SignallingError> {
        self.connection.ping(Instant::now(), timeout)?;
        self.drive(|e| matches!(e, Event::Pong).then_some(())).await
    }

    /// `invite`: offer a call, get the answer.
    pub async fn invite(
        &mut self,
        invite: &Invite,
        timeout: Duration,
    ) -> Result<InviteAnswer, SignallingError> {
        let params =
            serde_json::to_value(invite).map_err(|e| SignallingError::Protocol(e.to_string()))?;
        let v = self.call("invite", params, timeout).await?;
        serde_json::from_value(v)
            .map_err(|e| SignallingError::Protocol(format!("invite result: {e}")))
    }

    /// `accept`, as the library sends it: no parameters (the server knows the call by the
    /// connection).
    pub async fn accept(&mut self, timeout: Duration) -> Result<(), SignallingError> {
        self.call("accept", serde_json::json!({}), timeout)
            .await
            .map(|_| ())
    }

    /// `bye`, as the library sends it: the call named by its context token. Returns the
    /// result (our anchor's measurement of the agent's stream; the library ignores it).
    pub async fn bye(
        &mut self,
        call_context_token: &str,
        timeout: Duration,
    ) -> Result<Value, SignallingError> {
        self.call(
            "bye",
            serde_json::json!({ "callContextToken": call_context_token }),
            timeout,
        )
        .await
    }

    /// Closes the WebSocket with the close handshake (RFC 6455 §7.1.1): our Close frame, then
    /// the server's, within a second.
    pub async fn close(mut self) {
        self.connection.close();
        let closed = self.drive(|e| matches!(e, Event::Closed).then_some(()));
        let _ = tokio::time::timeout(Duration::from_secs(1), closed).await;
    }

    /// Moves bytes and timers between the socket and the connection until an event that
    /// `wanted` picks (or the connection fails).
    async fn drive<T>(
        &mut self,
        mut wanted: impl FnMut(Event) -> Option<T>,
    ) -> Result<T, SignallingError> {
        let mut buf = vec![0; READ];
        loop {
            while let Some(event) = self.connection.poll_event() {
                let picked = match event {
                    Event::RemoteBye => {
                        self.remote_byes += 1;
                        None
                    }
                    Event::Failed(e) => Some(Err(e)),
                    other => wanted(other).map(Ok),
                };
                if let Some(picked) = picked {
                    self.flush().await?;
                    return picked;
                }
            }
            self.flush().await?;
            if self.connection.is_ended() {
                return Err(SignallingError::Protocol("the connection is closed".into()));
            }
            let deadline = self.connection.poll_timeout();
            tokio::select! {
                read = self.tcp.read(&mut buf) => match read {
                    Ok(0) | Err(_) => self.connection.handle_eof(),
                    Ok(n) => self.connection.handle_input(&buf[..n]),
                },
                () = crate::clock::until_timeout(deadline) => self.connection.handle_timeout(Instant::now()),
            }
        }
    }

    async fn flush(&mut self) -> Result<(), SignallingError> {
        while let Some(data) = self.connection.poll_transmit() {
            self.tcp
                .write_all(&data)
                .await
                .map_err(|e| SignallingError::Protocol(format!("send: {e}")))?;
        }
        Ok(())
    }
}

/// Why a connection attempt failed, as the retry loop reports it.
fn connect_reason(e: SignallingError) -> String {
    match e {
        SignallingError::Connect(reason) => reason,
        other => other.to_string(),
    }
}
