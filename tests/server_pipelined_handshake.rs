//! A WebSocket client may send its op-7 auth frame right behind the upgrade
//! request, in the same write (the loadgen's `--pipeline-auth`). The server
//! must treat the bytes after the request as frames, and answer with the
//! 101 and the op-8 reply together: one send for both.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use corecast_testkit::pipelined::{pipelined_auth, read_101_and_packet};
use corecast_testkit::server::{op, Server};

const BIN: &str = env!("CARGO_BIN_EXE_corecast");

#[test]
fn upgrade_and_auth_in_one_write_get_101_and_op8_in_one_send() {
    let srv = Server::builder(BIN)
        .args(["--shards", "1", "--auth-mode", "insecure"])
        .start()
        .expect("start corecast");
    let hs = pipelined_auth(&srv.ws.to_string(), 42, "live://9");
    let mut s = TcpStream::connect(srv.ws).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&hs.request).expect("one write: upgrade + op 7");
    let reply = read_101_and_packet(&mut s, &hs.key).expect("the 101 and op 8");
    assert_eq!(
        reply,
        (op::AUTH_REPLY, 1, Vec::new()),
        "op 8, empty body: auth ok"
    );

    // Shard reports are periodic: wait for one that saw the auth (the
    // connection is still open then), close, and wait for a later one where
    // the shard has freed the connection: by then every send it made for it
    // has completed and is counted.
    let authed = srv
        .wait_metric(&["corecast_auth_ok_total"], Duration::from_secs(10), |v| {
            v >= 1.0
        })
        .expect("metrics");
    assert_eq!(authed, 1.0, "one auth reported");
    drop(s);
    let slab = srv
        .wait_metric(
            &["corecast_index_entries", "index=\"slab\""],
            Duration::from_secs(10),
            |v| v == 0.0,
        )
        .expect("metrics");
    assert_eq!(slab, 0.0, "the connection was freed");
    let sends = srv.metric_sum(&["corecast_sends_total"]).expect("metrics");
    assert_eq!(sends, 1.0, "101 and op 8 went out in one send");
}
