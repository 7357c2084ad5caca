//! Helpers for the control API tests: start the real `corecast` binary on
//! free loopback ports, speak goim to it over TCP and WebSocket, and call its
//! HTTP API with a minimal HTTP/1.1 client. Blocking std sockets only.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corecast_protocol::packet::{encode_packet_to_vec, parse_packet, raw_packets};
use corecast_protocol::ws::handshake::{parse_upgrade_response, write_upgrade_request};
use corecast_protocol::ws::mask::apply_mask;

pub const OP_AUTH: u32 = 7;
pub const OP_AUTH_REPLY: u32 = 8;
pub const OP_RAW: u32 = 9;
const MAX_BODY: usize = 1 << 20;

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().unwrap().port()
}

/// The real server binary, killed (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    log: std::path::PathBuf,
}

impl Server {
    /// Starts `corecast serve` with `shards` shards, insecure auth and fast
    /// shard reports, and waits until `/health` answers 200.
    pub fn start(shards: usize, extra: &[&str]) -> Server {
        let ws: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tcp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "control-test-{}-{}.log",
            std::process::id(),
            http.port()
        ));
        let log_file = std::fs::File::create(&log).expect("create server log file");
        let child = Command::new(env!("CARGO_BIN_EXE_corecast"))
            .arg("serve")
            .args(["--ws-listen", &ws.to_string()])
            .args(["--tcp-listen", &tcp.to_string()])
            .args(["--http-listen", &http.to_string()])
            .args(["--shards", &shards.to_string()])
            .args(["--report-interval-ms", "50"])
            .args(["--auth-mode", "insecure"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start the corecast binary");
        let mut s = Server {
            child,
            ws,
            tcp,
            http,
            log,
        };
        s.wait_healthy();
        s
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "corecast exited early ({status}); log:\n{}",
                    self.log_text()
                );
            }
            if let Ok(r) = try_http(self.http, "GET", "/health", b"", "") {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "corecast not healthy in 20 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> HttpReply {
        http(self.http, method, path, body, "")
    }

    /// Polls `GET path` until `pred` holds on its JSON `data` (shard reports
    /// are periodic, so counts converge rather than change at once).
    pub fn wait_json(
        &self,
        path: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.http("GET", path, b"");
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

    /// Sum of every sample of `family` whose labels contain all `labels`.
    pub fn metric(&self, family: &str, labels: &[&str]) -> f64 {
        let r = self.http("GET", "/metrics", b"");
        assert_eq!(r.status, 200);
        metric_sum(&r.text(), family, labels)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of the samples of `family` (exact name) carrying every label in `labels`.
pub fn metric_sum(text: &str, family: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            name == family && labels.iter().all(|x| l.contains(x))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    extra_headers: &str,
) -> HttpReply {
    try_http(addr, method, path, body, extra_headers)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    extra_headers: &str,
) -> std::io::Result<HttpReply> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)?;
    let mut raw = Vec::new();
    // The server may answer (413, 431) and close before reading everything
    // we sent; a reset after the answer is fine.
    let _ = s.read_to_end(&mut raw);
    parse_reply(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad HTTP reply: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

pub fn parse_reply(raw: &[u8]) -> Option<HttpReply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(HttpReply {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    })
}

/// How a test client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ws,
}

/// A goim client (TCP or WebSocket) that authenticated and then collects
/// the application packets pushed to it.
pub struct Client {
    pub transport: Transport,
    stream: TcpStream,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<(u32, Vec<u8>)>,
    pub closed: bool,
}

impl Client {
    /// Connects and authenticates (op 7 → op 8 with an empty body).
    pub fn connect(
        server: &Server,
        transport: Transport,
        mid: i64,
        key: &str,
        room: &str,
        accepts: &[u32],
    ) -> Client {
        let addr = match transport {
            Transport::Tcp => server.tcp,
            Transport::Ws => server.ws,
        };
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        let mut c = Client {
            transport,
            stream,
            buf: Vec::new(),
            pending: Default::default(),
            closed: false,
        };
        if transport == Transport::Ws {
            c.ws_handshake();
        }
        let auth = serde_json::json!({
            "mid": mid, "key": key, "room_id": room, "platform": "test", "accepts": accepts,
        });
        c.send_packet(OP_AUTH, 1, auth.to_string().as_bytes());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (op, body) = c
                .next_raw(deadline)
                .unwrap_or_else(|| panic!("no auth reply for {key} ({transport:?})"));
            if op == OP_AUTH_REPLY {
                assert!(
                    body.is_empty(),
                    "auth of {key} refused: {}",
                    String::from_utf8_lossy(&body)
                );
                return c;
            }
        }
    }

    fn ws_handshake(&mut self) {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut req = Vec::new();
        write_upgrade_request("127.0.0.1", "/sub", key, &mut req);
        self.stream.write_all(&req).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(n) = parse_upgrade_response(&self.buf, key).expect("valid 101 response") {
                self.buf.drain(..n);
                return;
            }
            assert!(self.fill(deadline), "no WebSocket handshake response");
        }
    }

    pub fn send_packet(&mut self, op: u32, seq: u32, body: &[u8]) {
        let packet = encode_packet_to_vec(op, seq, body);
        match self.transport {
            Transport::Tcp => self.stream.write_all(&packet).unwrap(),
            Transport::Ws => {
                let mut frame = vec![0x82u8];
                if packet.len() < 126 {
                    frame.push(0x80 | packet.len() as u8);
                } else {
                    frame.push(0x80 | 126);
                    frame.extend_from_slice(&(packet.len() as u16).to_be_bytes());
                }
                let mask = [0x12, 0x34, 0x56, 0x78];
                frame.extend_from_slice(&mask);
                let mut payload = packet;
                apply_mask(&mut payload, mask, 0);
                frame.extend_from_slice(&payload);
                self.stream.write_all(&frame).unwrap();
            }
        }
    }

    /// Reads more bytes; false on timeout or close.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut tmp = [0u8; 16 * 1024];
        match self.stream.read(&mut tmp) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// Splits one complete unit (TCP packet / WS frame) off the buffer into
    /// `pending`, unpacking op-9 containers. Returns false if incomplete.
    fn parse_one(&mut self) -> bool {
        match self.transport {
            Transport::Tcp => match parse_packet(&self.buf, MAX_BODY).expect("valid packet stream")
            {
                Some((p, n)) => {
                    assert_ne!(p.op, OP_RAW, "TCP clients never see op 9");
                    self.pending.push_back((p.op, p.body.to_vec()));
                    self.buf.drain(..n);
                    true
                }
                None => false,
            },
            Transport::Ws => {
                let b = &self.buf;
                if b.len() < 2 {
                    return false;
                }
                let opcode = b[0] & 0x0f;
                assert_eq!(b[1] & 0x80, 0, "server frames are unmasked");
                let (len, hdr) = match b[1] & 0x7f {
                    126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                    127 if b.len() >= 10 => (
                        u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => return false,
                    n => (n as usize, 2),
                };
                if b.len() < hdr + len {
                    return false;
                }
                let payload = b[hdr..hdr + len].to_vec();
                self.buf.drain(..hdr + len);
                match opcode {
                    0x2 => {
                        let (p, n) = parse_packet(&payload, MAX_BODY)
                            .unwrap()
                            .expect("whole packet per frame");
                        assert_eq!(n, payload.len(), "exactly one packet per frame");
                        if p.op == OP_RAW {
                            for inner in raw_packets(p.body) {
                                let inner = inner.expect("valid op-9 container");
                                self.pending.push_back((inner.op, inner.body.to_vec()));
                            }
                        } else {
                            self.pending.push_back((p.op, p.body.to_vec()));
                        }
                    }
                    0x8 => self.closed = true,
                    _ => {}
                }
                true
            }
        }
    }

    /// Next packet of any op, or `None` at the deadline / on close.
    fn next_raw(&mut self, deadline: Instant) -> Option<(u32, Vec<u8>)> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Some(p);
            }
            if self.parse_one() {
                continue;
            }
            if self.closed || !self.fill(deadline) {
                return None;
            }
        }
    }

    /// Sends a heartbeat (op 2) and returns the room count of its reply (op 3).
    pub fn heartbeat(&mut self) -> u32 {
        self.send_packet(2, 0, b"");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (op, body) = self.next_raw(deadline).expect("heartbeat reply");
            if op == 3 {
                return u32::from_be_bytes(body[..4].try_into().expect("4-byte count"));
            }
        }
    }

    /// Next pushed message (ops ≥ 1000), skipping replies.
    pub fn next_push(&mut self, timeout: Duration) -> Option<(u32, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let (op, body) = self.next_raw(deadline)?;
            if op >= 1000 {
                return Some((op, body));
            }
        }
    }

    /// Every push up to and including the one whose body is `marker`.
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

    /// Asserts that nothing is pushed within `quiet`.
    pub fn expect_silence(&mut self, quiet: Duration) {
        if let Some((op, body)) = self.next_push(quiet) {
            panic!(
                "unexpected push op {op}: {:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}
