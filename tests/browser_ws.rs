//! A real browser as a goim client: headless Chromium (Debian's `chromium`)
//! loads `tests/browser/goim_client.html`, whose plain JS connects to `/sub`
//! of the real `corecast` binary, authenticates (op 7 → 8), heartbeats
//! (op 2 → 3 with the online count) and reads a room push from an op-9
//! container. The page records each step in `<pre id="log">`; chromium's
//! `--dump-dom` prints the DOM once the page's load event fires, which this
//! test holds back (a pending `<img src="/hold">`) until the page reported
//! `/done` and the server-side checks ran.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use corecast_testkit::server::{http, Server};

const BIN: &str = env!("CARGO_BIN_EXE_corecast");
const PAGE_HTML: &str = include_str!("browser/goim_client.html");
const PAGE_JS: &str = include_str!("browser/goim_client.js");

const MID: i64 = 4242;
const PUSH_OP: u32 = 1000;
const PUSH_BODY: &str = "hello browser from corecast: \u{e9}t\u{e9} \u{2713}";
/// Server heartbeat interval; a silent connection is closed after 2 of them
/// plus a second.
const HEARTBEAT_INTERVAL_SECS: u32 = 2;
/// The page heartbeats every 500 ms and waits for this many replies, so the
/// connection outlives the server's silence timeout only by heartbeating.
const HEARTBEAT_REPLIES_WANTED: u32 = 14;
/// Generous bounds for a loaded 2-core box: chromium's start alone can take
/// many seconds there.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

/// Finds Debian's chromium; the test fails (never skips) without it.
fn chromium_path() -> PathBuf {
    let default = Path::new("/usr/bin/chromium");
    if default.exists() {
        return default.into();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("chromium"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "chromium not found (/usr/bin/chromium or on PATH): this test needs Debian's \
                 chromium, install it with `apt-get install -y chromium`"
            )
        })
}

/// Released once: wakes every held `/hold` request.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }

    fn wait(&self, timeout: Duration) {
        let open = self.open.lock().unwrap();
        let _ = self.cv.wait_timeout_while(open, timeout, |o| !*o).unwrap();
    }
}

/// A tiny HTTP/1.1 responder for the page: `/` (HTML), `/goim_client.js`,
/// `/done?outcome=…` (reported on a channel) and `/hold` (answered only when
/// the gate opens, or after a safety timeout so chromium always finishes).
struct PageServer {
    addr: SocketAddr,
    gate: Arc<Gate>,
    done: Receiver<String>,
}

impl PageServer {
    fn start() -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind page server");
        let addr = listener.local_addr().unwrap();
        let gate = Arc::new(Gate::default());
        let (tx, done) = mpsc::channel();
        let g = gate.clone();
        // Lives until the test process exits; a thread per request because
        // `/hold` blocks while the page keeps fetching.
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let (g, tx) = (g.clone(), tx.clone());
                std::thread::spawn(move || serve_request(s, &g, &tx));
            }
        });
        PageServer { addr, gate, done }
    }
}

fn serve_request(mut s: TcpStream, gate: &Gate, done: &Sender<String>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&req);
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let path = target.split('?').next().unwrap_or("/");
    let (status, ctype, body): (&str, &str, &[u8]) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", PAGE_HTML.as_bytes()),
        "/goim_client.js" => (
            "200 OK",
            "application/javascript; charset=utf-8",
            PAGE_JS.as_bytes(),
        ),
        "/done" => {
            let outcome = target.split_once("outcome=").map_or("", |(_, o)| o);
            let _ = done.send(outcome.to_string());
            ("204 No Content", "text/plain", b"")
        }
        "/hold" => {
            gate.wait(STEP_TIMEOUT * 3);
            ("204 No Content", "text/plain", b"")
        }
        _ => ("404 Not Found", "text/plain", b"not found"),
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(body);
}

/// Headless chromium running `--dump-dom`; killed on drop, its profile
/// directory removed.
struct Chromium {
    child: Child,
    profile: PathBuf,
    stderr_log: PathBuf,
    dom: Receiver<String>,
}

impl Chromium {
    fn start(bin: &Path, url: &str) -> Chromium {
        let tag = format!("{}-{}", std::process::id(), MID);
        let profile = std::env::temp_dir().join(format!("corecast-chromium-profile-{tag}"));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create chromium profile dir");
        let stderr_log = std::env::temp_dir().join(format!("corecast-chromium-{tag}.log"));
        let stderr = std::fs::File::create(&stderr_log).expect("create chromium log");
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-proxy-server",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--dump-dom", url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            // Its own process group, so drop can kill the helpers too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        // Drain stdout on a thread so chromium never blocks on a full pipe.
        let mut out = child.stdout.take().expect("piped stdout");
        let (tx, dom) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        Chromium {
            child,
            profile,
            stderr_log,
            dom,
        }
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if !self.exited() {
            // SAFETY: kill(2) on the process group of the chromium this
            // test spawned (its pid is the group id, see `process_group(0)`).
            unsafe {
                libc::kill(-(self.child.id() as i32), libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
        let _ = std::fs::remove_file(&self.stderr_log);
    }
}

/// Percent-encodes a query value (enough for URLs and room ids).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text of `<pre id="log">` in the dumped DOM, HTML entities undone.
fn page_log(dom: &str) -> Option<String> {
    let start = dom.find("<pre id=\"log\">")? + "<pre id=\"log\">".len();
    let end = start + dom[start..].find("</pre>")?;
    Some(
        dom[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&"),
    )
}

/// Polls `cond` every 100 ms until it holds; fails with `what` (plus
/// chromium's stderr) on timeout or if chromium exits first.
fn wait_while_browser_runs(
    chromium: &mut Chromium,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        if chromium.exited() {
            panic!(
                "chromium exited before {what}; its stderr:\n{}",
                chromium.stderr_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn chromium_page_authenticates_heartbeats_and_receives_room_push() {
    let chromium_bin = chromium_path();
    let srv = Server::builder(BIN)
        .args(["--shards", "2", "--auth-mode", "insecure"])
        .args([
            "--heartbeat-interval-secs",
            &HEARTBEAT_INTERVAL_SECS.to_string(),
        ])
        .start()
        .expect("start corecast");
    let page = PageServer::start();
    let ws_url = format!("ws://{}/sub", srv.ws);
    let url = format!(
        "http://{}/?ws={}&mid={MID}&room={}&hb_ms=500&hb_min={HEARTBEAT_REPLIES_WANTED}",
        page.addr,
        query_escape(&ws_url),
        query_escape("test://1"),
    );
    let mut chromium = Chromium::start(&chromium_bin, &url);

    // The browser is the server's only client: one successful auth is it.
    let authed = wait_while_browser_runs(&mut chromium, "authenticating", || {
        srv.metric_sum(&["corecast_auth_ok_total"]).unwrap() >= 1.0
    });
    assert!(
        authed,
        "the page did not authenticate within {STEP_TIMEOUT:?}; chromium stderr:\n{}\nserver log:\n{}",
        chromium.stderr_tail(),
        srv.log_text()
    );
    srv.push_room("test", "1", PUSH_OP, PUSH_BODY.as_bytes())
        .expect("push to test://1");

    let mut outcome = None;
    wait_while_browser_runs(&mut chromium, "the page reported /done", || {
        outcome = page.done.try_recv().ok();
        outcome.is_some()
    });

    // Server side, while the page still holds its connection open: it is
    // an authenticated WebSocket connection that survived past the silence
    // timeout because the page heartbeats.
    let ws_conns = srv
        .wait_metric(
            &["corecast_connections", "protocol=\"ws\""],
            Duration::from_secs(10),
            |v| v == 1.0,
        )
        .unwrap();
    let failures = srv.metric_sum(&["corecast_auth_failures_total"]).unwrap();
    let (status, total) = http(srv.http, "GET", "/goim/online/total", b"").unwrap();
    page.gate.release();

    // The load event fires now and chromium prints the DOM and exits.
    let dom = chromium
        .dom
        .recv_timeout(STEP_TIMEOUT)
        .unwrap_or_else(|_| panic!("chromium printed no DOM within {STEP_TIMEOUT:?}"));
    let log = page_log(&dom).unwrap_or_else(|| {
        panic!(
            "no <pre id=\"log\"> in chromium's output:\n{dom}\nstderr:\n{}",
            chromium.stderr_tail()
        )
    });
    let context = format!(
        "page log:\n{log}\nchromium stderr:\n{}",
        chromium.stderr_tail()
    );
    drop(chromium);
    eprintln!("page log:\n{log}");

    assert_eq!(outcome.as_deref(), Some("done"), "page outcome; {context}");
    assert!(
        log.lines().any(|l| l == "AUTH_REPLY op=8 len=0"),
        "no successful op-8 auth reply; {context}"
    );
    let online: Vec<i64> = log
        .lines()
        .filter_map(|l| l.strip_prefix("HEARTBEAT_REPLY op=3 len=4 online="))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        online.len() >= HEARTBEAT_REPLIES_WANTED as usize,
        "fewer than {HEARTBEAT_REPLIES_WANTED} op-3 replies with a 4-byte body; {context}"
    );
    assert!(
        online.iter().all(|&n| n <= 1) && online.contains(&1),
        "op-3 online counts should reach 1 (the page alone in test://1); {context}"
    );
    let expected_push = format!("PUSH via=op9 op={PUSH_OP} body={PUSH_BODY}");
    assert_eq!(
        log.lines().filter(|l| *l == expected_push).count(),
        1,
        "the pushed message should arrive once inside op 9; {context}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("UNEXPECTED")
            || l.starts_with("ERROR")
            || l.starts_with("CLOSE")),
        "unexpected packets, parse errors or a close; {context}"
    );

    assert_eq!(ws_conns, 1.0, "authenticated WS connections on the server");
    assert_eq!(failures, 0.0, "auth failures on the server");
    assert_eq!(status, 200, "/goim/online/total: {total}");
    let total: serde_json::Value = serde_json::from_str(&total).expect("online/total JSON");
    assert_eq!(
        total["data"]["conn_count"], 1,
        "/goim/online/total: {total}"
    );
}
