//! A minimal blocking HTTP/1.1 keep-alive client for the server's control API
//! (goim's `/goim/push/*`). The API is not the hot path of the server, and a
//! pusher thread only needs POST with a body and the status back.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

pub struct HttpClient {
    addr: SocketAddrV4,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

/// Status and body of a response.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpClient {
    pub fn new(addr: SocketAddrV4) -> Self {
        Self {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    fn connect(&mut self) -> Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr.into(), Duration::from_secs(5))
                .with_context(|| format!("connecting to the HTTP API at {}", self.addr))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.stream = Some(s);
        }
        Ok(self.stream.as_mut().expect("just connected"))
    }

    /// POST `path` (with query) and `body`; retries once on a fresh connection
    /// if a kept-alive one was closed by the server.
    pub fn post(&mut self, path: &str, body: &[u8]) -> Result<Response> {
        self.request("POST", path, body)
    }

    pub fn get(&mut self, path: &str) -> Result<Response> {
        self.request("GET", path, b"")
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Response> {
        match self.try_request(method, path, body) {
            Ok(r) => Ok(r),
            Err(_) if self.stream.is_some() => {
                self.stream = None;
                self.try_request(method, path, body)
            }
            Err(e) => Err(e),
        }
    }

    fn try_request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Response> {
        let host = self.addr;
        let mut req = Vec::with_capacity(128 + body.len());
        write!(
            req,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        req.extend_from_slice(body);
        let s = self.connect()?;
        if let Err(e) = s.write_all(&req) {
            self.stream = None;
            return Err(e.into());
        }
        let result = read_response(self.stream.as_mut().expect("connected"), &mut self.buf);
        match result {
            Ok((resp, keep_alive)) => {
                if !keep_alive {
                    self.stream = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }
}

impl HttpClient {
    /// Pipelined POSTs: every request written at once, then the responses
    /// read in order (HTTP/1.1 pipelining). One wake-up of the server then
    /// serves many pushes. No retry: on an error the connection is dropped
    /// and the error returned with how many responses were read before it.
    pub fn post_pipelined(
        &mut self,
        reqs: &[(&str, &[u8])],
        out: &mut Vec<Response>,
    ) -> std::result::Result<(), (usize, anyhow::Error)> {
        out.clear();
        let host = self.addr;
        let mut wire = Vec::with_capacity(reqs.len() * 200);
        for (path, body) in reqs {
            let _ = write!(
                wire,
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            wire.extend_from_slice(body);
        }
        let s = self.connect().map_err(|e| (0, e))?;
        if let Err(e) = s.write_all(&wire) {
            self.stream = None;
            return Err((0, e.into()));
        }
        self.buf.clear();
        while out.len() < reqs.len() {
            let stream = self.stream.as_mut().expect("connected");
            match read_one(stream, &mut self.buf) {
                Ok((resp, keep_alive)) => {
                    out.push(resp);
                    if !keep_alive && out.len() < reqs.len() {
                        self.stream = None;
                        return Err((out.len(), anyhow!("server closed a pipelined connection")));
                    }
                }
                Err(e) => {
                    self.stream = None;
                    return Err((out.len(), e));
                }
            }
        }
        Ok(())
    }
}

fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Response, bool)> {
    buf.clear();
    read_one(s, buf)
}

/// Reads one response; `buf` holds bytes already read (a pipelined
/// response's successors stay in it for the next call).
fn read_one(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Response, bool)> {
    let mut chunk = [0u8; 4096];
    let mut fresh = buf.is_empty();
    loop {
        if fresh {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("HTTP connection closed before a response");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        fresh = true;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(buf)? {
            httparse::Status::Partial => continue,
            httparse::Status::Complete(n) => n,
        };
        let status = resp
            .code
            .ok_or_else(|| anyhow!("response without status"))?;
        let mut len = None;
        let mut keep_alive = true;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                len = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok());
            } else if h.name.eq_ignore_ascii_case("connection") {
                keep_alive = !h.value.eq_ignore_ascii_case(b"close");
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("chunked responses are not supported by the loadgen client");
            }
        }
        let len = len.unwrap_or(0);
        while buf.len() < head_len + len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("HTTP connection closed inside a response body");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[head_len..head_len + len].to_vec();
        buf.drain(..head_len + len);
        return Ok((Response { status, body }, keep_alive));
    }
}

/// goim's reply envelope `{"code":0,...}`: Ok when HTTP 200 and code 0.
pub fn check_goim_reply(r: &Response) -> Result<()> {
    if r.status != 200 {
        bail!("HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).context("goim reply is not JSON")?;
    match v.get("code").and_then(|c| c.as_i64()) {
        Some(0) => Ok(()),
        _ => bail!(
            "goim reply with an error: {}",
            String::from_utf8_lossy(&r.body)
        ),
    }
}
