//! Handshake parser: arbitrary bytes never panic; an accepted request is
//! consistent (length within the input, key valid) and every prefix of it is
//! reported incomplete or the same error class; responses round-trip.
#![no_main]

use corecast_protocol::ws::handshake::{
    accept_key, is_valid_key, parse_upgrade, parse_upgrade_response, write_accept_response,
    write_reject_response, HandshakeOptions,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = HandshakeOptions {
        path: None,
        max_request_len: 4096,
    };
    match parse_upgrade(data, &opts) {
        Ok(Some(req)) => {
            assert!(req.request_len <= data.len());
            assert!(is_valid_key(req.key));
            assert!(req.path.starts_with('/'));
            // Parsing just the request gives the same result.
            let again = parse_upgrade(&data[..req.request_len], &opts)
                .unwrap()
                .unwrap();
            assert_eq!(again, req);
            let mut resp = Vec::new();
            write_accept_response(req.key, &mut resp);
            assert_eq!(parse_upgrade_response(&resp, req.key), Ok(Some(resp.len())));
            assert_eq!(accept_key(req.key).len(), 28);
        }
        Ok(None) => assert!(data.len() < 4096),
        Err(e) => {
            let mut resp = Vec::new();
            write_reject_response(&e, &mut resp);
            assert!(resp.starts_with(b"HTTP/1.1 4"));
        }
    }
    let _ = parse_upgrade(data, &HandshakeOptions::default());
    let _ = parse_upgrade_response(data, "dGhlIHNhbXBsZSBub25jZQ==");
});
