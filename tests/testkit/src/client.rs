//! Blocking goim clients built on `corecast-protocol`: [`TcpClient`] and
//! [`WsClient`] (auth, heartbeats, op-9 unpacking, raw bytes and frames for
//! bad-input tests), and [`GoimClient`], either of them behind one face for
//! tests that run the same steps over both transports, with timeouts that
//! return `None` instead of failing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use corecast_protocol::packet::{encode_packet_to_vec, op, parse_packet, raw_packets, Packet};
use corecast_protocol::ws::frame::{encode_client_frame, Message, MessageDecoder, Opcode};
use corecast_protocol::ws::handshake::{
    key_from_bytes, parse_upgrade_response, write_upgrade_request,
};

use crate::server::{Server, READ_TIMEOUT};

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
        let _ = self.socket().set_read_timeout(Some(READ_TIMEOUT));
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

/// Reads packets with `read` until one with `op` (skipping others).
fn read_until_op(mut read: impl FnMut() -> Result<Packet>, op: u32) -> Result<Packet> {
    loop {
        let p = read()?;
        if p.op == op {
            return Ok(p);
        }
    }
}

/// The room count an op-3 heartbeat reply carries.
fn heartbeat_count(p: &Packet) -> Result<u32> {
    Ok(u32::from_be_bytes(
        p.body.get(..4).context("op 3 body")?.try_into()?,
    ))
}

/// Fails unless `p` is the auth success reply: op 8 with an empty body.
fn expect_auth_ok(p: &Packet) -> Result<()> {
    if p.op != op::AUTH_REPLY || !p.body.is_empty() {
        bail!(
            "auth refused: op {} body {:?}",
            p.op,
            String::from_utf8_lossy(&p.body)
        );
    }
    Ok(())
}

/// An op-7 body: `{"mid":…,"key":…,"room_id":…,"accepts":[…],"token":…}`.
pub fn auth_body(mid: i64, key: &str, room: &str, accepts: &[u32], token: Option<&str>) -> Vec<u8> {
    let mut v = serde_json::json!({"mid": mid, "key": key, "room_id": room, "platform": "test", "accepts": accepts});
    if let Some(t) = token {
        v["token"] = serde_json::Value::String(t.into());
    }
    serde_json::to_vec(&v).expect("json")
}

/// Unpacks op-9 containers into their inner packets; other packets as is.
pub fn flatten(p: Packet) -> Vec<Packet> {
    if p.op != op::RAW {
        return vec![p];
    }
    raw_packets(&p.body)
        .filter_map(|r| r.ok())
        .map(|r| r.to_owned())
        .collect()
}

/// A goim client over raw TCP.
pub struct TcpClient {
    pub s: TcpStream,
    buf: Vec<u8>,
    queue: std::collections::VecDeque<Packet>,
}

impl TcpClient {
    pub fn connect(addr: SocketAddr) -> Result<TcpClient> {
        let s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(TcpClient {
            s,
            buf: Vec::new(),
            queue: Default::default(),
        })
    }

    /// Connects with a small receive buffer (set before connect, so the
    /// advertised window stays small): a client that can be made to stall.
    pub fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: i32) -> Result<TcpClient> {
        use std::os::fd::FromRawFd;
        let SocketAddr::V4(v4) = addr else {
            bail!("IPv4 only")
        };
        // SAFETY: plain socket syscalls on a fresh fd owned by the TcpStream below.
        let s = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let s = TcpStream::from_raw_fd(fd);
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&rcvbuf as *const i32).cast(),
                4,
            );
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            if libc::connect(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            ) != 0
            {
                bail!("connect {addr}: {}", std::io::Error::last_os_error());
            }
            s
        };
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(TcpClient {
            s,
            buf: Vec::new(),
            queue: Default::default(),
        })
    }

    /// Closes with a TCP reset (SO_LINGER 0) instead of a FIN.
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our own open socket.
        unsafe {
            libc::setsockopt(
                self.s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            );
        }
    }

    /// Connects and authenticates; fails unless op 8 with an empty body comes back.
    pub fn connect_auth(addr: SocketAddr, body: &[u8]) -> Result<TcpClient> {
        let mut c = TcpClient::connect(addr)?;
        c.send(op::AUTH, 1, body)?;
        let p = c.read()?;
        expect_auth_ok(&p)?;
        Ok(c)
    }

    pub fn send(&mut self, op: u32, seq: u32, body: &[u8]) -> Result<()> {
        self.s.write_all(&encode_packet_to_vec(op, seq, body))?;
        Ok(())
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.s.write_all(bytes)?;
        Ok(())
    }

    /// Next packet (containers unpacked); errors on EOF or timeout.
    pub fn read(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = self.queue.pop_front() {
                return Ok(p);
            }
            if let Some((p, n)) =
                parse_packet(&self.buf, 1 << 24).map_err(|e| anyhow!("bad packet: {e}"))?
            {
                let p = p.to_owned();
                self.buf.drain(..n);
                self.queue.extend(flatten(p));
                continue;
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).context("read")?;
            if n == 0 {
                bail!("connection closed by the server");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until a packet with `op` (skipping others).
    pub fn read_op(&mut self, op: u32) -> Result<Packet> {
        read_until_op(|| self.read(), op)
    }

    /// Heartbeat round trip: returns the online count of op 3.
    pub fn heartbeat(&mut self) -> Result<u32> {
        self.send(op::HEARTBEAT, 0, b"")?;
        heartbeat_count(&self.read_op(op::HEARTBEAT_REPLY)?)
    }

    /// Reads packets until EOF; returns them (errors if still open after `timeout`).
    pub fn read_until_closed(&mut self, timeout: Duration) -> Result<Vec<Packet>> {
        self.s.set_read_timeout(Some(timeout))?;
        let mut got = Vec::new();
        loop {
            match self.read() {
                Ok(p) => got.push(p),
                Err(e) if format!("{e:#}").contains("closed by the server") => return Ok(got),
                Err(e) if format!("{e:#}").contains("reset") => return Ok(got),
                Err(e) => return Err(e.context("server did not close the connection")),
            }
        }
    }
}

/// What a WS client got: a packet (binary message; op-9 unpacked by
/// [`WsClient::read_packet`]) or a control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    Binary(Vec<u8>),
    Text(String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// A WebSocket goim client.
pub struct WsClient {
    pub s: TcpStream,
    dec: MessageDecoder,
    events: std::collections::VecDeque<WsEvent>,
    packets: std::collections::VecDeque<Packet>,
}

impl WsClient {
    /// TCP connect + `GET /sub` upgrade.
    pub fn connect(addr: SocketAddr) -> Result<WsClient> {
        let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        s.set_nodelay(true)?;
        let key = key_from_bytes(rand16());
        let mut req = Vec::new();
        write_upgrade_request(&addr.to_string(), "/sub", &key, &mut req);
        s.write_all(&req)?;
        let mut buf = Vec::new();
        let used = loop {
            let mut b = [0u8; 1024];
            let n = s.read(&mut b)?;
            if n == 0 {
                bail!(
                    "closed during handshake: {:?}",
                    String::from_utf8_lossy(&buf)
                );
            }
            buf.extend_from_slice(&b[..n]);
            if let Some(n) =
                parse_upgrade_response(&buf, &key).map_err(|e| anyhow!("handshake: {e}"))?
            {
                break n;
            }
        };
        let mut c = WsClient {
            s,
            dec: MessageDecoder::client(1 << 24),
            events: Default::default(),
            packets: Default::default(),
        };
        let mut rest = buf[used..].to_vec();
        if !rest.is_empty() {
            c.feed(&mut rest)?;
        }
        Ok(c)
    }

    pub fn connect_auth(addr: SocketAddr, body: &[u8]) -> Result<WsClient> {
        let mut c = WsClient::connect(addr)?;
        c.send(op::AUTH, 1, body)?;
        let p = c.read_packet()?;
        expect_auth_ok(&p)?;
        Ok(c)
    }

    /// Sends one packet in one masked binary frame.
    pub fn send(&mut self, op: u32, seq: u32, body: &[u8]) -> Result<()> {
        self.send_frame(Opcode::Binary, &encode_packet_to_vec(op, seq, body))
    }

    pub fn send_frame(&mut self, opcode: Opcode, payload: &[u8]) -> Result<()> {
        let mut f = Vec::new();
        encode_client_frame(opcode, payload, rand4(), &mut f);
        self.s.write_all(&f)?;
        Ok(())
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.s.write_all(bytes)?;
        Ok(())
    }

    fn feed(&mut self, data: &mut [u8]) -> Result<()> {
        let events = &mut self.events;
        self.dec
            .feed(data, |m| {
                events.push_back(match m {
                    Message::Binary(b) => WsEvent::Binary(b.to_vec()),
                    Message::Text(t) => WsEvent::Text(t.to_string()),
                    Message::Ping(p) => WsEvent::Ping(p.to_vec()),
                    Message::Pong(p) => WsEvent::Pong(p.to_vec()),
                    Message::Close(c) => WsEvent::Close(c.map(|(c, r)| (c.0, r.to_string()))),
                })
            })
            .map_err(|e| anyhow!("bad frame from server: {e}"))?;
        Ok(())
    }

    /// Next WebSocket event; errors on EOF or timeout.
    pub fn read_event(&mut self) -> Result<WsEvent> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            let mut chunk = vec![0u8; 65536];
            let n = self.s.read(&mut chunk).context("read")?;
            if n == 0 {
                bail!("connection closed by the server");
            }
            self.feed(&mut chunk[..n])?;
        }
    }

    /// Next goim packet (op-9 containers unpacked); control frames other
    /// than close are skipped, a close frame is an error.
    pub fn read_packet(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = self.packets.pop_front() {
                return Ok(p);
            }
            match self.read_event()? {
                WsEvent::Binary(b) => {
                    let (p, n) = parse_packet(&b, 1 << 24)
                        .map_err(|e| anyhow!("bad packet: {e}"))?
                        .ok_or_else(|| anyhow!("truncated packet in a frame"))?;
                    if n != b.len() {
                        bail!("frame holds more than one packet");
                    }
                    self.packets.extend(flatten(p.to_owned()));
                }
                WsEvent::Close(c) => bail!("server closed with {c:?}"),
                _ => {}
            }
        }
    }

    /// Reads until a packet with `op` (skipping others).
    pub fn read_op(&mut self, op: u32) -> Result<Packet> {
        read_until_op(|| self.read_packet(), op)
    }

    /// Heartbeat round trip: returns the online count of op 3.
    pub fn heartbeat(&mut self) -> Result<u32> {
        self.send(op::HEARTBEAT, 0, b"")?;
        heartbeat_count(&self.read_op(op::HEARTBEAT_REPLY)?)
    }

    /// Reads until the server's close frame; returns its code (None if the
    /// frame had no code) and the packets seen before it. Errors if the
    /// connection stays open past `timeout` or ends without a close frame.
    pub fn expect_close(&mut self, timeout: Duration) -> Result<(Option<u16>, Vec<Packet>)> {
        self.s.set_read_timeout(Some(timeout))?;
        let mut got = Vec::new();
        loop {
            match self.read_event().context("waiting for a close frame")? {
                WsEvent::Close(c) => return Ok((c.map(|(c, _)| c), got)),
                WsEvent::Binary(b) => {
                    if let Ok(Some((p, _))) = parse_packet(&b, 1 << 24) {
                        got.extend(flatten(p.to_owned()));
                    }
                }
                _ => {}
            }
        }
    }

    /// Waits for EOF (after a close frame was read), up to `timeout`.
    pub fn expect_eof(&mut self, timeout: Duration) -> Result<()> {
        self.s.set_read_timeout(Some(timeout))?;
        let mut b = [0u8; 4096];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(anyhow!("connection not closed: {e}")),
            }
        }
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(Instant::now().elapsed().as_nanos());
        let v = h.finish().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    out
}

fn rand16() -> [u8; 16] {
    rand_bytes::<16>()
}

fn rand4() -> [u8; 4] {
    rand_bytes::<4>()
}
