//! WebSocket opening handshake: RFC 6455 §1.3 example, validation rules, both sides.

use corecast_protocol::ws::handshake::{
    accept_key, accept_key_bytes, has_token, key_from_bytes, parse_upgrade, parse_upgrade_response,
    write_accept_response, write_reject_response, write_upgrade_request, HandshakeOptions,
};
use corecast_protocol::HandshakeError;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn request(lines: &[&str]) -> Vec<u8> {
    let mut s = String::from("GET /sub HTTP/1.1\r\n");
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn good_lines() -> Vec<&'static str> {
    vec![
        "Host: server.example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Origin: http://example.com",
        "Sec-WebSocket-Version: 13",
    ]
}

fn parse(
    buf: &[u8],
) -> Result<Option<corecast_protocol::ws::handshake::UpgradeRequest<'_>>, HandshakeError> {
    parse_upgrade(buf, &HandshakeOptions::default())
}

fn with_line(replace: &str, by: Option<&'static str>) -> Vec<u8> {
    let lines: Vec<&str> = good_lines()
        .into_iter()
        .filter_map(|l| if l.starts_with(replace) { by } else { Some(l) })
        .collect();
    request(&lines)
}

#[test]
fn rfc_accept_key_example() {
    assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(&accept_key_bytes(KEY), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn valid_request_is_accepted() {
    let mut buf = request(&good_lines());
    let len = buf.len();
    buf.extend_from_slice(b"\x82\x80trailing frame bytes");
    let req = parse(&buf).unwrap().unwrap();
    assert_eq!(req.path, "/sub");
    assert_eq!(req.key, KEY);
    assert_eq!(req.host, "server.example.com");
    assert_eq!(req.origin, Some("http://example.com"));
    assert_eq!(req.request_len, len);
}

#[test]
fn every_prefix_is_incomplete() {
    let buf = request(&good_lines());
    for i in 0..buf.len() {
        assert_eq!(parse(&buf[..i]), Ok(None), "prefix {i}");
    }
}

#[test]
fn tokens_are_case_insensitive_in_comma_lists() {
    let buf = request(&[
        "host: a",
        "upgrade: h2c, WebSocket",
        "connection: keep-alive,  UPGRADE ",
        "sec-websocket-key:  dGhlIHNhbXBsZSBub25jZQ== ",
        "sec-websocket-version: 13",
    ]);
    let req = parse(&buf).unwrap().unwrap();
    assert_eq!(req.key, KEY);
    assert!(has_token(b"a, b ,c", "B"));
    assert!(!has_token(b"upgrades", "upgrade"));
}

#[test]
fn repeated_connection_headers_are_combined() {
    let buf = request(&[
        "Host: a",
        "Upgrade: websocket",
        "Connection: keep-alive",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]);
    assert!(parse(&buf).unwrap().is_some());
}

#[test]
fn path_with_query_and_absolute_form() {
    let buf = String::from_utf8(request(&good_lines())).unwrap();
    let q = buf.replacen("/sub", "/sub?room=1", 1);
    let req = parse(q.as_bytes()).unwrap().unwrap();
    assert_eq!((req.path_only(), req.query()), ("/sub", Some("room=1")));
    let abs = buf.replacen("/sub", "http://server.example.com/sub", 1);
    assert_eq!(parse(abs.as_bytes()).unwrap().unwrap().path, "/sub");
    let any = HandshakeOptions {
        path: None,
        ..HandshakeOptions::default()
    };
    let other = buf.replacen("/sub", "/other", 1);
    assert_eq!(
        parse_upgrade(other.as_bytes(), &any).unwrap().unwrap().path,
        "/other"
    );
}

// One test per rule violation.

#[test]
fn rule_method_must_be_get() {
    let buf = String::from_utf8(request(&good_lines()))
        .unwrap()
        .replacen("GET", "POST", 1);
    assert_eq!(parse(buf.as_bytes()), Err(HandshakeError::BadMethod));
}

#[test]
fn rule_http_version_must_be_1_1() {
    let buf = String::from_utf8(request(&good_lines()))
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert_eq!(parse(buf.as_bytes()), Err(HandshakeError::BadHttpVersion));
}

#[test]
fn rule_wrong_path() {
    let buf = String::from_utf8(request(&good_lines()))
        .unwrap()
        .replacen("/sub", "/pub", 1);
    assert_eq!(
        parse(buf.as_bytes()),
        Err(HandshakeError::BadPath("/pub".into()))
    );
    let buf = String::from_utf8(request(&good_lines()))
        .unwrap()
        .replacen("/sub", "*", 1);
    assert_eq!(
        parse(buf.as_bytes()),
        Err(HandshakeError::BadPath("*".into()))
    );
}

#[test]
fn rule_host_required() {
    assert_eq!(
        parse(&with_line("Host", None)),
        Err(HandshakeError::BadHost)
    );
    let mut lines = good_lines();
    lines.push("Host: twice");
    assert_eq!(parse(&request(&lines)), Err(HandshakeError::BadHost));
}

#[test]
fn rule_upgrade_websocket_required() {
    assert_eq!(
        parse(&with_line("Upgrade", None)),
        Err(HandshakeError::BadUpgrade)
    );
    assert_eq!(
        parse(&with_line("Upgrade", Some("Upgrade: h2c"))),
        Err(HandshakeError::BadUpgrade)
    );
}

#[test]
fn rule_connection_upgrade_required() {
    assert_eq!(
        parse(&with_line("Connection", None)),
        Err(HandshakeError::BadConnection)
    );
    assert_eq!(
        parse(&with_line("Connection", Some("Connection: keep-alive"))),
        Err(HandshakeError::BadConnection)
    );
}

#[test]
fn rule_version_13_required_with_426() {
    for v in [
        None,
        Some("Sec-WebSocket-Version: 8"),
        Some("Sec-WebSocket-Version: 13, 8"),
    ] {
        let e = parse(&with_line("Sec-WebSocket-Version", v)).unwrap_err();
        assert_eq!(e, HandshakeError::BadVersion);
        assert_eq!(e.status(), 426);
    }
}

#[test]
fn rule_key_must_be_base64_of_16_bytes() {
    for k in [
        None,
        Some("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"), // no padding
        Some("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSE="), // 17 bytes
        Some("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j!Q=="), // bad alphabet
        Some("Sec-WebSocket-Key: "),
    ] {
        assert_eq!(
            parse(&with_line("Sec-WebSocket-Key", k)),
            Err(HandshakeError::BadKey),
            "{k:?}"
        );
    }
    let mut lines = good_lines();
    lines.push("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(parse(&request(&lines)), Err(HandshakeError::BadKey));
}

#[test]
fn rule_request_size_limit() {
    let opts = HandshakeOptions {
        max_request_len: 64,
        ..HandshakeOptions::default()
    };
    let buf = request(&good_lines());
    assert_eq!(
        parse_upgrade(&buf, &opts),
        Err(HandshakeError::TooLarge(64))
    );
    assert_eq!(
        parse_upgrade(&buf[..64], &opts),
        Err(HandshakeError::TooLarge(64))
    );
    assert_eq!(parse_upgrade(&buf[..63], &opts), Ok(None));
}

#[test]
fn rule_too_many_headers() {
    let mut lines = good_lines();
    lines.extend(std::iter::repeat_n("X-Pad: 1", 40));
    assert_eq!(parse(&request(&lines)), Err(HandshakeError::TooManyHeaders));
}

#[test]
fn rule_malformed_http() {
    assert!(matches!(
        parse(b"GET /sub HTTP/1.1\r\nHo st: a\r\n\r\n"),
        Err(HandshakeError::Malformed(_))
    ));
    assert!(matches!(
        parse(b"\x16\x03\x01\x00"),
        Err(HandshakeError::Malformed(_))
    ));
}

#[test]
fn accept_response_bytes() {
    let mut out = Vec::new();
    write_accept_response(KEY, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
}

#[test]
fn reject_responses_name_the_problem() {
    let mut out = Vec::new();
    write_reject_response(&HandshakeError::BadKey, &mut out);
    let s = String::from_utf8(out).unwrap();
    assert!(s.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{s}");
    assert!(
        s.ends_with("\r\n\r\nSec-WebSocket-Key must be base64 of 16 bytes\n"),
        "{s}"
    );
    let body_len = s.split("\r\n\r\n").nth(1).unwrap().len();
    assert!(s.contains(&format!("Content-Length: {body_len}\r\n")));
    assert!(!s.contains("Sec-WebSocket-Version"));

    let mut out = Vec::new();
    write_reject_response(&HandshakeError::BadVersion, &mut out);
    let s = String::from_utf8(out).unwrap();
    assert!(s.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{s}");
    assert!(s.contains("\r\nSec-WebSocket-Version: 13\r\n"));
}

#[test]
fn client_side_round_trip() {
    let key = key_from_bytes(*b"the sample nonce");
    assert_eq!(key, KEY);
    let mut req = Vec::new();
    write_upgrade_request("127.0.0.1:3102", "/sub", &key, &mut req);
    let parsed = parse(&req).unwrap().unwrap();
    assert_eq!((parsed.host, parsed.key), ("127.0.0.1:3102", KEY));

    let mut resp = Vec::new();
    write_accept_response(parsed.key, &mut resp);
    for i in 0..resp.len() {
        assert_eq!(
            parse_upgrade_response(&resp[..i], &key),
            Ok(None),
            "prefix {i}"
        );
    }
    assert_eq!(parse_upgrade_response(&resp, &key), Ok(Some(resp.len())));
    let other = key_from_bytes([0; 16]);
    assert_eq!(
        parse_upgrade_response(&resp, &other),
        Err(HandshakeError::BadAccept)
    );

    let mut rej = Vec::new();
    write_reject_response(&HandshakeError::BadVersion, &mut rej);
    assert_eq!(
        parse_upgrade_response(&rej, &key),
        Err(HandshakeError::BadStatus(426))
    );
}
