//! A minimal blocking HTTP/1.1 client for the control API: one request per
//! connection ([`request`]), or raw bytes on a kept-alive connection read
//! back as a sequence of replies ([`read_replies`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::server::READ_TIMEOUT;

/// One HTTP response: status, head (status line and headers) and body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (naming the body) when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.text()))
    }

    /// Value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// Whether the server announced it closes the connection after this reply.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One request line + headers + body, as bytes. `extra_headers` are whole
/// lines, each ending in `\r\n`.
pub fn request_bytes(
    method: &str,
    path: &str,
    body: &[u8],
    keep_alive: bool,
    extra_headers: &str,
) -> Vec<u8> {
    let connection = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: corecast\r\n{connection}Content-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// One request on a fresh connection (`Connection: close`), read to EOF.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    extra_headers: &str,
) -> Result<HttpReply> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.write_all(&request_bytes(method, path, body, false, extra_headers))?;
    let mut raw = Vec::new();
    // The server may answer (413, 431) and close before reading all we
    // sent; a reset after the answer is fine.
    let _ = s.read_to_end(&mut raw);
    parse_reply(&raw).ok_or_else(|| {
        anyhow!(
            "{method} {path}: bad HTTP reply {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// The first response in `raw` (its body is whatever follows the head).
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

/// Splits one complete `Content-Length` response off the front of `buf`.
fn split_reply(buf: &mut Vec<u8>) -> Result<Option<HttpReply>> {
    let Some(mut r) = parse_reply(buf) else {
        return Ok(None);
    };
    let len: usize = r
        .header("content-length")
        .ok_or_else(|| anyhow!("reply without Content-Length: {}", r.head))?
        .parse()
        .context("Content-Length")?;
    if r.body.len() < len {
        return Ok(None);
    }
    r.body.truncate(len);
    buf.drain(..r.head.len() + 4 + len);
    Ok(Some(r))
}

/// What [`read_replies`] read from a kept-alive connection.
#[derive(Debug)]
pub struct Replies {
    pub replies: Vec<HttpReply>,
    /// The server closed the connection (EOF or reset) after the last reply.
    pub closed: bool,
}

/// Reads responses from `s` until `want` came, the server closed the
/// connection, or `timeout` passed (an error: the server neither answered
/// nor closed). Bytes after the last whole reply are an error too.
pub fn read_replies(s: &mut TcpStream, want: usize, timeout: Duration) -> Result<Replies> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some(r) = split_reply(&mut buf)? {
            replies.push(r);
        }
        if replies.len() >= want {
            return Ok(Replies {
                replies,
                closed: false,
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{} of {want} replies within {timeout:?} and the connection is still open",
                replies.len()
            );
        }
        s.set_read_timeout(Some(left))?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("read replies"),
        };
        if n == 0 {
            if !buf.is_empty() {
                bail!(
                    "connection closed inside a reply after {} whole ones: {:?}",
                    replies.len(),
                    String::from_utf8_lossy(&buf)
                );
            }
            return Ok(Replies {
                replies,
                closed: true,
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sum of the samples of metric `family` (exact name, e.g.
/// `corecast_loop_turn_seconds_count`) whose labels contain every string in
/// `labels`, in Prometheus text `text`.
pub fn metric_family_sum(text: &str, family: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            name == family && labels.iter().all(|x| l.contains(x))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
