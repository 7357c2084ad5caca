//! A goim client over either transport, for tests that run the same steps
//! over TCP and WebSocket: connect + auth, heartbeats, and the pushes it
//! receives (op-9 containers unpacked), with timeouts that return `None`
//! instead of failing.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use corecast_protocol::packet::Packet;

use crate::server::{auth_body, Server, TcpClient, WsClient};

/// How a test client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ws,
}

/// A goim client authenticated over TCP or WebSocket.
pub enum GoimClient {
    Tcp(TcpClient),
    Ws(WsClient),
}

impl GoimClient {
    /// Connects to `server` and authenticates (op 7 → op 8 with an empty
    /// body; the server must run with insecure auth); panics on failure.
    pub fn connect(
        server: &Server,
        transport: Transport,
        mid: i64,
        key: &str,
        room: &str,
        accepts: &[u32],
    ) -> GoimClient {
        let auth = auth_body(mid, key, room, accepts, None);
        let c = match transport {
            Transport::Tcp => TcpClient::connect_auth(server.tcp, &auth).map(GoimClient::Tcp),
            Transport::Ws => WsClient::connect_auth(server.ws, &auth).map(GoimClient::Ws),
        };
        c.unwrap_or_else(|e| panic!("connect + auth of {key} over {transport:?}: {e:#}"))
    }

    pub fn transport(&self) -> Transport {
        match self {
            GoimClient::Tcp(_) => Transport::Tcp,
            GoimClient::Ws(_) => Transport::Ws,
        }
    }

    fn socket(&self) -> &TcpStream {
        match self {
            GoimClient::Tcp(c) => &c.s,
            GoimClient::Ws(c) => &c.s,
        }
    }

    /// Sends a heartbeat (op 2) and returns the room count of its reply (op 3).
    pub fn heartbeat(&mut self) -> u32 {
        let _ = self
            .socket()
            .set_read_timeout(Some(crate::server::READ_TIMEOUT));
        match self {
            GoimClient::Tcp(c) => c.heartbeat(),
            GoimClient::Ws(c) => c.heartbeat(),
        }
        .unwrap_or_else(|e| panic!("heartbeat: {e:#}"))
    }

    /// Next packet within `timeout`; `None` on timeout or when the server
    /// closed the connection (a close is not an error for a receiver).
    fn next_packet(&mut self, deadline: Instant) -> Option<Packet> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        self.socket().set_read_timeout(Some(left)).ok()?;
        let r: Result<Packet> = match self {
            GoimClient::Tcp(c) => c.read(),
            GoimClient::Ws(c) => c.read_packet(),
        };
        r.ok()
    }

    /// Next pushed message (ops ≥ 1000) within `timeout`, skipping replies.
    pub fn next_push(&mut self, timeout: Duration) -> Option<(u32, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.next_packet(deadline)?;
            if p.op >= 1000 {
                return Some((p.op, p.body.to_vec()));
            }
        }
    }

    /// Every push up to and including the one whose body is `marker`;
    /// panics with what came if the marker does not come within `timeout`.
    pub fn pushes_until(&mut self, marker: &[u8], timeout: Duration) -> Vec<(u32, String)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_push(left) {
                Some((op, body)) => {
                    let done = body == marker;
                    got.push((op, String::from_utf8_lossy(&body).into_owned()));
                    if done {
                        return got;
                    }
                }
                None => panic!(
                    "marker {:?} never arrived; got {got:?}",
                    String::from_utf8_lossy(marker)
                ),
            }
        }
    }

    /// Panics if anything is pushed within `quiet`.
    pub fn expect_silence(&mut self, quiet: Duration) {
        if let Some((op, body)) = self.next_push(quiet) {
            panic!(
                "unexpected push op {op}: {:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}
