//! WebSocket opening handshake (RFC 6455 §4), both sides.
//!
//! Server: [`parse_upgrade`] parses and validates the upgrade request with
//! httparse (borrowing from the input), [`write_accept_response`] writes the
//! 101, [`write_reject_response`] a 400 / 426 naming the problem.
//! Client (loadgen): [`write_upgrade_request`] and [`parse_upgrade_response`].

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::BufMut;
use sha1::{Digest, Sha1};

use crate::error::HandshakeError;

/// GUID appended to the key before hashing (RFC 6455 §1.3).
pub const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Default limit on the size of an upgrade request, headers included.
pub const DEFAULT_MAX_REQUEST_LEN: usize = 8192;
/// Most header lines accepted in a request or response.
pub const MAX_HEADERS: usize = 32;
/// Length of a Sec-WebSocket-Accept value.
pub const ACCEPT_LEN: usize = 28;

/// What [`parse_upgrade`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeOptions<'p> {
    /// Required path (compared without the query string); `None` accepts any.
    pub path: Option<&'p str>,
    /// Requests longer than this are refused with [`HandshakeError::TooLarge`].
    pub max_request_len: usize,
}

impl Default for HandshakeOptions<'_> {
    /// Path `/sub` (goim's), 8 KiB requests.
    fn default() -> Self {
        HandshakeOptions {
            path: Some("/sub"),
            max_request_len: DEFAULT_MAX_REQUEST_LEN,
        }
    }
}

/// A validated upgrade request, borrowing from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    /// Request target path as sent, query string included (origin form).
    pub path: &'a str,
    /// Sec-WebSocket-Key, trimmed (base64 of 16 bytes).
    pub key: &'a str,
    /// Host header.
    pub host: &'a str,
    /// Origin header, if any.
    pub origin: Option<&'a str>,
    /// Sec-WebSocket-Protocol, if any (not negotiated; informational).
    pub protocols: Option<&'a str>,
    /// X-Forwarded-For or X-Real-IP, if any (for logs behind a proxy).
    pub forwarded_for: Option<&'a str>,
    /// Bytes taken by the request; anything after it is already WebSocket data.
    pub request_len: usize,
}

impl<'a> UpgradeRequest<'a> {
    /// Path without the query string.
    pub fn path_only(&self) -> &'a str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }

    /// Query string (after `?`), if any.
    pub fn query(&self) -> Option<&'a str> {
        self.path.split_once('?').map(|(_, q)| q)
    }
}

fn httparse_error(e: httparse::Error) -> HandshakeError {
    match e {
        httparse::Error::TooManyHeaders => HandshakeError::TooManyHeaders,
        httparse::Error::HeaderName => HandshakeError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HandshakeError::Malformed("invalid header value"),
        httparse::Error::NewLine => HandshakeError::Malformed("invalid line ending"),
        httparse::Error::Status => HandshakeError::Malformed("invalid status line"),
        httparse::Error::Token => HandshakeError::Malformed("invalid token"),
        httparse::Error::Version => HandshakeError::Malformed("invalid HTTP version"),
    }
}

/// True if the comma separated header `value` contains `token` (ASCII case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Finds a header that must appear at most once; `Err(())` if it is repeated.
fn single<'a>(headers: &[httparse::Header<'a>], name: &str) -> Result<Option<&'a [u8]>, ()> {
    let mut found = None;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)) {
        if found.is_some() {
            return Err(());
        }
        found = Some(h.value);
    }
    Ok(found)
}

fn any_has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case(name) && has_token(h.value, token))
}

fn opt_str<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// True if `key` is base64 of exactly 16 bytes.
pub fn is_valid_key(key: &str) -> bool {
    let mut out = [0u8; 18];
    key.len() == 24 && matches!(BASE64.decode_slice(key, &mut out), Ok(16))
}

/// Parses and validates a WebSocket upgrade request at the start of `buf`.
///
/// `Ok(None)`: the request is incomplete (and still within the size limit).
/// Checks: GET, HTTP/1.1, one Host, `Upgrade` containing `websocket` and
/// `Connection` containing `upgrade` (case-insensitive tokens in comma lists,
/// over repeated headers too), `Sec-WebSocket-Version: 13`, one
/// `Sec-WebSocket-Key` that is base64 of 16 bytes, and the path.
pub fn parse_upgrade<'a>(
    buf: &'a [u8],
    opts: &HandshakeOptions<'_>,
) -> Result<Option<UpgradeRequest<'a>>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let request_len = match req.parse(buf).map_err(httparse_error)? {
        httparse::Status::Partial => {
            if buf.len() >= opts.max_request_len {
                return Err(HandshakeError::TooLarge(opts.max_request_len));
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    if request_len > opts.max_request_len {
        return Err(HandshakeError::TooLarge(opts.max_request_len));
    }
    if req.method != Some("GET") {
        return Err(HandshakeError::BadMethod);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::BadHttpVersion);
    }
    let target = req.path.unwrap_or("");
    let path = origin_form(target).ok_or_else(|| HandshakeError::BadPath(target.to_owned()))?;
    if let Some(want) = opts.path {
        let only = path.split_once('?').map_or(path, |(p, _)| p);
        if only != want {
            return Err(HandshakeError::BadPath(target.to_owned()));
        }
    }
    let headers: &[httparse::Header<'a>] = req.headers;
    let host = single(headers, "host")
        .ok()
        .flatten()
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(HandshakeError::BadHost)?;
    if !any_has_token(headers, "upgrade", "websocket") {
        return Err(HandshakeError::BadUpgrade);
    }
    if !any_has_token(headers, "connection", "upgrade") {
        return Err(HandshakeError::BadConnection);
    }
    match single(headers, "sec-websocket-version") {
        Ok(Some(v)) if v.trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::BadVersion),
    }
    let key = match single(headers, "sec-websocket-key") {
        Ok(Some(v)) => std::str::from_utf8(v)
            .map_err(|_| HandshakeError::BadKey)?
            .trim(),
        _ => return Err(HandshakeError::BadKey),
    };
    if !is_valid_key(key) {
        return Err(HandshakeError::BadKey);
    }
    Ok(Some(UpgradeRequest {
        path,
        key,
        host,
        origin: opt_str(headers, "origin"),
        protocols: opt_str(headers, "sec-websocket-protocol"),
        forwarded_for: opt_str(headers, "x-forwarded-for")
            .or_else(|| opt_str(headers, "x-real-ip")),
        request_len,
    }))
}

/// The path of a request target in origin form (`/x`) or absolute form
/// (`http://host/x`, which HTTP/1.1 servers must also accept).
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let (scheme, rest) = target.split_once("://")?;
    if !["http", "https", "ws", "wss"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
    {
        return None;
    }
    rest.find('/').map(|i| &rest[i..])
}

/// Sec-WebSocket-Accept for `key` without allocating: base64(sha1(key + GUID)).
pub fn accept_key_bytes(key: &str) -> [u8; ACCEPT_LEN] {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    let digest = sha.finalize();
    let mut out = [0u8; ACCEPT_LEN];
    let n = BASE64
        .encode_slice(digest, &mut out)
        .expect("28 bytes hold base64 of 20");
    debug_assert_eq!(n, ACCEPT_LEN);
    out
}

/// Sec-WebSocket-Accept for `key`.
pub fn accept_key(key: &str) -> String {
    String::from_utf8(accept_key_bytes(key).to_vec()).expect("base64 is ASCII")
}

/// Writes the `101 Switching Protocols` response for a request with `key`.
pub fn write_accept_response(key: &str, dst: &mut impl BufMut) {
    dst.put_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    dst.put_slice(&accept_key_bytes(key));
    dst.put_slice(b"\r\n\r\n");
}

/// Writes a 400 (or 426 with `Sec-WebSocket-Version: 13` for a bad version)
/// response whose plain-text body names the problem; the caller then closes.
pub fn write_reject_response(err: &HandshakeError, dst: &mut impl BufMut) {
    let status = err.status();
    let reason = if status == 426 {
        "Upgrade Required"
    } else {
        "Bad Request"
    };
    let body = format!("{err}\n");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 426 {
        head.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    head.push_str("\r\n");
    dst.put_slice(head.as_bytes());
    dst.put_slice(body.as_bytes());
}

/// A Sec-WebSocket-Key from 16 caller-supplied random bytes (client side).
pub fn key_from_bytes(random: [u8; 16]) -> String {
    BASE64.encode(random)
}

/// Writes a client upgrade request (loadgen side).
pub fn write_upgrade_request(host: &str, path: &str, key: &str, dst: &mut impl BufMut) {
    for part in [
        "GET ", path, " HTTP/1.1\r\nHost: ", host,
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
        key, "\r\n\r\n",
    ] {
        dst.put_slice(part.as_bytes());
    }
}

/// Parses the server's response to a request sent with `key` (client side).
///
/// `Ok(Some(n))`: a valid 101 response of `n` bytes (what follows is frames).
/// `Ok(None)`: incomplete.
pub fn parse_upgrade_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf).map_err(httparse_error)? {
        httparse::Status::Partial => {
            if buf.len() >= DEFAULT_MAX_REQUEST_LEN {
                return Err(HandshakeError::TooLarge(DEFAULT_MAX_REQUEST_LEN));
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::BadStatus(code));
    }
    let headers: &[httparse::Header<'_>] = resp.headers;
    if !any_has_token(headers, "upgrade", "websocket") {
        return Err(HandshakeError::BadUpgrade);
    }
    if !any_has_token(headers, "connection", "upgrade") {
        return Err(HandshakeError::BadConnection);
    }
    match single(headers, "sec-websocket-accept") {
        Ok(Some(v)) if v.trim_ascii() == accept_key_bytes(key) => Ok(Some(n)),
        _ => Err(HandshakeError::BadAccept),
    }
}
