//! Starts the real `corecast` binary for black-box tests and talks to it
//! over real sockets.
//!
//! - [`Server`]: `corecast serve` on port 0 for WS, TCP and HTTP (the
//!   server picks free ports and prints them in its ready line, so there is
//!   no bind race), stderr in a log file, killed on drop.
//! - [`TcpClient`] / [`WsClient`]: blocking goim clients built on
//!   `corecast-protocol` (auth, heartbeats, op-9 unpacking, raw frames for
//!   bad-input tests).
//! - [`http`]: one control API request, status and body (the whole reply:
//!   [`crate::http`]); [`Server::request`], [`Server::wait_json`] and
//!   [`Server::metric`] for the control API and metrics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::http::HttpReply;
use corecast_protocol::packet::{encode_packet_to_vec, parse_packet, raw_packets, Packet};
use corecast_protocol::ws::frame::{encode_client_frame, Message, MessageDecoder, Opcode};
use corecast_protocol::ws::handshake::{
    key_from_bytes, parse_upgrade_response, write_upgrade_request,
};

/// goim ops used by tests (the protocol crate's constants).
pub use corecast_protocol::packet::op;

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

/// Default read timeout of the clients.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `corecast serve`.
pub struct Server {
    child: Child,
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
}

/// Options for [`Server::start`].
pub struct ServerBuilder {
    bin: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl ServerBuilder {
    /// Adds command-line arguments (after `serve`).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// `--shards n`.
    pub fn shards(self, n: usize) -> Self {
        self.args(["--shards".to_string(), n.to_string()])
    }

    /// `--auth-mode insecure`: op 7 is taken at its word (mid, key, room).
    pub fn insecure_auth(self) -> Self {
        self.args(["--auth-mode", "insecure"])
    }

    /// Sets an environment variable for the server.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Starts the server and waits for its ready line (30 s at most).
    pub fn start(self) -> Result<Server> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log =
            std::env::temp_dir().join(format!("corecast-test-{}-{n}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).context("create server log")?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .args([
                "--ws-listen",
                "127.0.0.1:0",
                "--tcp-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--report-interval-ms", "100"])
            .args(&self.args)
            .env("CORECAST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if line.starts_with("corecast ready ") {
                    let _ = tx.send(line);
                    break;
                }
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("corecast did not become ready (exit {status:?}); log:\n{log_text}");
            }
        };
        let field = |name: &str| -> Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .ok_or_else(|| anyhow!("no {name} in ready line {line:?}"))?
                .parse()
                .context("parse address")
        };
        Ok(Server {
            ws: field("ws")?,
            tcp: field("tcp")?,
            http: field("http")?,
            child,
            log,
        })
    }
}

impl Server {
    /// A builder for the binary at `bin` (pass `env!("CARGO_BIN_EXE_corecast")`).
    pub fn builder(bin: impl AsRef<Path>) -> ServerBuilder {
        ServerBuilder {
            bin: bin.as_ref().into(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// `corecast serve` with `shards` shards and insecure auth; panics (with
    /// the reason) when it does not become ready.
    pub fn start_insecure(bin: impl AsRef<Path>, shards: usize) -> Server {
        Server::builder(bin)
            .shards(shards)
            .insecure_auth()
            .start()
            .unwrap_or_else(|e| panic!("start corecast: {e:#}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits up to `timeout` for the server to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /metrics`, parsed into `(name{labels}, value)` lines.
    pub fn metrics(&self) -> Result<Vec<(String, f64)>> {
        let (status, body) = http(self.http, "GET", "/metrics", b"")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// Sum of a metric over every line whose name and labels contain all of
    /// `parts` (e.g. `["corecast_index_entries", "index=\"keys\""]`).
    pub fn metric_sum(&self, parts: &[&str]) -> Result<f64> {
        Ok(self
            .metrics()?
            .iter()
            .filter(|(k, _)| parts.iter().all(|p| k.contains(p)))
            .map(|(_, v)| v)
            .sum())
    }

    /// Polls `metric_sum(parts)` until `pred` holds (up to `timeout`);
    /// returns the last value either way.
    pub fn wait_metric(
        &self,
        parts: &[&str],
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric_sum(parts)?;
            if pred(v) || Instant::now() >= deadline {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One request to the HTTP API on a fresh connection; panics when the
    /// server does not answer with a well-formed reply.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> HttpReply {
        crate::http::request(self.http, method, path, body, "")
            .unwrap_or_else(|e| panic!("{e:#}; server log:\n{}", self.log_text()))
    }

    /// Polls `GET path` until `pred` holds on the `data` of its goim reply
    /// (shard reports are periodic, so counts converge rather than change
    /// at once); panics naming `what` after 10 s.
    pub fn wait_json(
        &self,
        path: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.request("GET", path, b"");
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let v = r.json();
            assert_eq!(v["code"], 0, "{path}: {v}");
            if pred(&v["data"]) {
                return v["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {path} still answers {v}"
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Sum of the samples of metric `family` (exact name) carrying every
    /// label in `labels`, from a fresh `GET /metrics`.
    pub fn metric(&self, family: &str, labels: &[&str]) -> f64 {
        let r = self.request("GET", "/metrics", b"");
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        crate::http::metric_family_sum(&r.text(), family, labels)
    }

    /// `POST /goim/push/room?operation=&type=&room=` with `body`.
    pub fn push_room(&self, room_type: &str, room: &str, op: u32, body: &[u8]) -> Result<()> {
        self.push(
            &format!("/goim/push/room?operation={op}&type={room_type}&room={room}"),
            body,
        )
    }

    /// `POST /goim/push/keys?operation=&keys=`.
    pub fn push_keys(&self, keys: &[&str], op: u32, body: &[u8]) -> Result<()> {
        self.push(
            &format!("/goim/push/keys?operation={op}&keys={}", keys.join(",")),
            body,
        )
    }

    /// `POST /goim/push/mids?operation=&mids=`.
    pub fn push_mids(&self, mids: &[i64], op: u32, body: &[u8]) -> Result<()> {
        let m: Vec<String> = mids.iter().map(|m| m.to_string()).collect();
        self.push(
            &format!("/goim/push/mids?operation={op}&mids={}", m.join(",")),
            body,
        )
    }

    /// `POST /goim/push/all?operation=`.
    pub fn push_all(&self, op: u32, body: &[u8]) -> Result<()> {
        self.push(&format!("/goim/push/all?operation={op}"), body)
    }

    fn push(&self, path: &str, body: &[u8]) -> Result<()> {
        let (status, text) = http(self.http, "POST", path, body)?;
        if status != 200 {
            bail!("POST {path} answered {status}: {text}");
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body
/// (see [`crate::http`] for the whole reply).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<(u16, String)> {
    let r = crate::http::request(addr, method, path, body, "")?;
    Ok((r.status, r.text()))
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
        loop {
            let p = self.read()?;
            if p.op == op {
                return Ok(p);
            }
        }
    }

    /// Heartbeat round trip: returns the online count of op 3.
    pub fn heartbeat(&mut self) -> Result<u32> {
        self.send(op::HEARTBEAT, 0, b"")?;
        let p = self.read_op(op::HEARTBEAT_REPLY)?;
        Ok(u32::from_be_bytes(
            p.body[..4].try_into().context("op 3 body")?,
        ))
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

    pub fn read_op(&mut self, op: u32) -> Result<Packet> {
        loop {
            let p = self.read_packet()?;
            if p.op == op {
                return Ok(p);
            }
        }
    }

    pub fn heartbeat(&mut self) -> Result<u32> {
        self.send(op::HEARTBEAT, 0, b"")?;
        let p = self.read_op(op::HEARTBEAT_REPLY)?;
        Ok(u32::from_be_bytes(
            p.body[..4].try_into().context("op 3 body")?,
        ))
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
