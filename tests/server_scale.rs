//! One server process holds more connections than its own `ulimit -n`
//! (shards accept into io_uring direct descriptors, not the fd table), all
//! authenticated and answering heartbeats.
//!
//! The test process is capped at the same nofile limit, so the clients are
//! spread over child processes: the test binary re-runs itself with the
//! ignored `scale_child` test, which holds its share of connections and
//! takes commands on stdin.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use corecast_testkit::server::{auth_body, Server, TcpClient, WsClient};

const BIN: &str = env!("CARGO_BIN_EXE_corecast");
const CHILDREN: usize = 2;
const PER_CHILD: usize = 12_500;

fn nofile_soft() -> u64 {
    // SAFETY: getrlimit fills a plain struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

fn raise_nofile() {
    // SAFETY: get/setrlimit on plain structs.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

#[test]
fn one_process_holds_more_connections_than_its_nofile_limit() {
    raise_nofile();
    let total = CHILDREN * PER_CHILD;
    // 4 shards: each ring's file table is capped at RLIMIT_NOFILE.
    let srv = Server::builder(BIN)
        .args([
            "--shards",
            "4",
            "--auth-mode",
            "insecure",
            "--recv-buffers",
            "64",
        ])
        .args([
            "--handshake-timeout-secs",
            "60",
            "--heartbeat-interval-secs",
            "60",
        ])
        .start()
        .expect("start corecast");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.pid())).unwrap();
    let server_nofile: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("server nofile limit");
    assert!(
        (total as u64) > server_nofile,
        "this test needs nofile ({server_nofile}) below {total} to prove its point"
    );
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for i in 0..CHILDREN {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "scale_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("SCALE_CHILD_INDEX", i.to_string())
            .env("SCALE_WS", srv.ws.to_string())
            .env("SCALE_TCP", srv.tcp.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child client");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        children.push((child, stdin, lines));
    }
    let expect_line = |lines: &mut std::io::Lines<BufReader<std::process::ChildStdout>>,
                       want: &str| {
        for line in lines.by_ref() {
            let line = line.expect("child output");
            // libtest may print its own text on the same line.
            if let Some(at) = line.find("SCALE ") {
                assert_eq!(&line[at..], want, "child reported");
                return;
            }
        }
        panic!("child ended before {want:?}");
    };
    for (_, _, lines) in children.iter_mut() {
        expect_line(lines, &format!("SCALE connected {PER_CHILD}"));
    }
    let held = srv
        .wait_metric(&["corecast_connections"], Duration::from_secs(10), |v| {
            v >= total as f64
        })
        .unwrap();
    assert_eq!(
        held, total as f64,
        "authenticated connections held by the server"
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", srv.pid()))
        .unwrap()
        .count();
    assert!(fds < 200, "server uses {fds} fds for {total} connections");
    // Every connection answers a heartbeat.
    for (_, stdin, _) in children.iter_mut() {
        writeln!(stdin, "heartbeat").unwrap();
    }
    for (_, _, lines) in children.iter_mut() {
        expect_line(lines, &format!("SCALE heartbeats {PER_CHILD}"));
    }
    for (mut child, stdin, _) in children {
        drop(stdin);
        assert!(child.wait().unwrap().success());
    }
    let left = srv
        .wait_metric(
            &["corecast_index_entries", "index=\"slab\""],
            Duration::from_secs(20),
            |v| v == 0.0,
        )
        .unwrap();
    assert_eq!(left, 0.0);
}

/// Child side of the test above; does nothing unless started by it.
#[test]
#[ignore = "helper process of one_process_holds_more_connections_than_its_nofile_limit"]
fn scale_child() {
    let Ok(index) = std::env::var("SCALE_CHILD_INDEX") else {
        panic!("scale_child only runs as a child of one_process_holds_more_connections_than_its_nofile_limit");
    };
    raise_nofile();
    assert!(
        nofile_soft() as usize > PER_CHILD + 64,
        "child nofile {} too low",
        nofile_soft()
    );
    let index: usize = index.parse().unwrap();
    let ws = std::env::var("SCALE_WS").unwrap().parse().unwrap();
    let tcp = std::env::var("SCALE_TCP").unwrap().parse().unwrap();
    enum C {
        T(TcpClient),
        W(WsClient),
    }
    // Pipelined in chunks (connect a chunk, send every auth, then read every
    // reply) so the setup is not one round trip per connection; the chunk
    // stays below the listen backlog (somaxconn).
    let mut conns = Vec::with_capacity(PER_CHILD);
    let chunk = 500;
    for start in (0..PER_CHILD).step_by(chunk) {
        let mut batch = Vec::with_capacity(chunk);
        for i in start..(start + chunk).min(PER_CHILD) {
            let mid = (index * PER_CHILD + i) as i64;
            let body = auth_body(mid, "", &format!("scale://{}", i % 100), &[], None);
            // Child 0 holds some WebSocket clients too.
            let mut c = if index == 0 && i < 1000 {
                C::W(WsClient::connect(ws).unwrap())
            } else {
                C::T(TcpClient::connect(tcp).unwrap())
            };
            match &mut c {
                C::T(t) => t.send(7, 1, &body).unwrap(),
                C::W(w) => w.send(7, 1, &body).unwrap(),
            }
            batch.push(c);
        }
        for c in batch.iter_mut() {
            let p = match c {
                C::T(t) => t.read_op(8).unwrap(),
                C::W(w) => w.read_op(8).unwrap(),
            };
            assert!(p.body.is_empty(), "auth refused");
        }
        conns.extend(batch);
    }
    println!("SCALE connected {}", conns.len());
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        if line.unwrap().trim() == "heartbeat" {
            for c in conns.iter_mut() {
                match c {
                    C::T(t) => t.send(2, 0, b"").unwrap(),
                    C::W(w) => w.send(2, 0, b"").unwrap(),
                }
            }
            let mut ok = 0;
            for c in conns.iter_mut() {
                let n = match c {
                    C::T(t) => t.read_op(3).map(|p| p.body.len()),
                    C::W(w) => w.read_op(3).map(|p| p.body.len()),
                };
                if n.unwrap() == 4 {
                    ok += 1;
                }
            }
            println!("SCALE heartbeats {ok}");
        }
    }
}
