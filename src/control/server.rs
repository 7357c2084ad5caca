//! The control HTTP server: hyper 1.x HTTP/1.1 on the glommio executor.

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::api::{self, ApiCall, Route, RouteError};
use super::http_io::HyperIo;
use super::metrics;
use super::params::Query;
use super::produce::KafkaPush;
use super::state::ControlState;
use crate::fanout::{Push, PushTarget};

type Reply = Response<Full<Bytes>>;

const JSON: &str = "application/json; charset=utf-8";
const PROM_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Accepts control API connections until the listener fails.
pub async fn accept_loop(listener: glommio::net::TcpListener, state: Rc<ControlState>) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "control API accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        {
            let mut c = state.counters.borrow_mut();
            if c.http_conns_open >= state.cfg.max_http_conns as u64 {
                c.http_conns_rejected += 1;
                drop(stream);
                continue;
            }
            c.http_conns_accepted += 1;
            c.http_conns_open += 1;
        }
        let _ = stream.set_nodelay(true);
        glommio::spawn_local(serve_connection(stream, state.clone())).detach();
    }
}

/// Decrements the open-connection gauge however the connection task ends.
struct OpenConnGuard(Rc<ControlState>);

impl Drop for OpenConnGuard {
    fn drop(&mut self) {
        self.0.counters.borrow_mut().http_conns_open -= 1;
    }
}

async fn serve_connection(stream: glommio::net::TcpStream, state: Rc<ControlState>) {
    let _guard = OpenConnGuard(state.clone());
    let io = HyperIo::new(stream);
    let activity = io.activity();
    let gate = io.gate();
    let served = Rc::new(Cell::new(0u64));
    let cfg = &state.cfg;

    let svc_state = state.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = svc_state.clone();
        let served = served.clone();
        let gate = gate.clone();
        async move {
            let mut reply = handle(&state, req).await;
            served.set(served.get() + 1);
            // Per-connection request cap: stop reading, answer every request
            // already read (a pipelining client may have sent past the cap),
            // and mark the last of them `Connection: close`.
            if served.get() >= u64::from(state.cfg.max_requests_per_conn) {
                gate.stop_reading.set(true);
                if served.get() >= gate.requests_read.get() {
                    reply
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
            }
            Ok::<_, Infallible>(reply)
        }
    });

    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        // Once reading stops at the cap, the end-of-file it reports must not
        // cut short the replies still to be written.
        .half_close(true)
        .max_headers(cfg.max_headers)
        .max_header_size(cfg.max_header_size)
        .max_buf_size(cfg.max_header_size.max(8192) + cfg.max_body);
    let conn = builder.serve_connection(io, service).without_shutdown();

    // Idle watchdog: hyper's own timers need a `Send` timer, glommio's are not.
    let idle = cfg.idle_timeout;
    let watchdog = async move {
        loop {
            glommio::timer::sleep(Duration::from_secs(1).min(idle)).await;
            if Instant::now().duration_since(activity.get()) >= idle {
                return None;
            }
        }
    };
    let ended = futures_lite::future::or(
        async {
            match conn.await {
                Ok(parts) => Some(parts.io.into_inner()),
                Err(e) => {
                    tracing::debug!(error = %e, "control API connection ended with an error");
                    None
                }
            }
        },
        watchdog,
    )
    .await;
    if let Some(stream) = ended {
        lingering_close(stream).await;
    }
}

/// How long a closing connection keeps reading (and discarding) what the
/// client still sends.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Closes after the last reply without a reset: send FIN, then read until the
/// client closes too (or `CLOSE_LINGER` passes). Closing a socket with unread
/// input makes the kernel send RST, which can destroy replies the client has
/// not read yet — e.g. at the request cap, while a pipelining client is
/// still sending.
async fn lingering_close(stream: glommio::net::TcpStream) {
    use futures_lite::AsyncReadExt;
    if stream.shutdown(std::net::Shutdown::Write).await.is_err() {
        return;
    }
    let mut stream = stream;
    let drain = async {
        let mut sink = [0u8; 4096];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    futures_lite::future::or(drain, glommio::timer::sleep(CLOSE_LINGER)).await;
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn error_reply(status: StatusCode, message: &str) -> Reply {
    reply(
        status,
        JSON,
        api::error_body(api::goim_code(status), message),
    )
}

fn count(state: &ControlState, route: &'static str, status: StatusCode) {
    *state
        .counters
        .borrow_mut()
        .http_requests
        .entry((route, status.as_u16()))
        .or_insert(0) += 1;
}

/// Answers one request. Never fails: every problem becomes a status code.
pub async fn handle(state: &Rc<ControlState>, req: Request<Incoming>) -> Reply {
    let label;
    let r = match api::route(req.method(), req.uri().path()) {
        Err(RouteError::NotFound) => {
            label = "other";
            error_reply(StatusCode::NOT_FOUND, "no such endpoint")
        }
        Err(RouteError::MethodNotAllowed(allowed)) => {
            label = "other";
            let mut r = error_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            if let Ok(v) = HeaderValue::from_str(allowed.as_str()) {
                r.headers_mut().insert(ALLOW, v);
            }
            r
        }
        Ok(route) => {
            label = route.label();
            handle_route(state, route, req).await
        }
    };
    count(state, label, r.status());
    r
}

/// Reads the request body up to the configured limit.
async fn read_body(state: &ControlState, req: Request<Incoming>) -> Result<Bytes, Reply> {
    let limit = state.cfg.max_body;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_big = || {
        error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("message body is larger than the limit of {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Err(e) => Err(error_reply(
            StatusCode::BAD_REQUEST,
            &format!("could not read body: {e}"),
        )),
    }
}

async fn handle_route(state: &Rc<ControlState>, route: Route, req: Request<Incoming>) -> Reply {
    let call = match Query::parse(req.uri().query()).and_then(|q| api::parse_call(route, &q)) {
        Ok(c) => c,
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, &e.0),
    };
    match call {
        ApiCall::Push { target, op, speed } => {
            let body = match read_body(state, req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            if let Some(kafka) = &state.produce {
                push_via_kafka(state, kafka, target, op, body).await
            } else {
                push(state, target, op, speed, &body).await
            }
        }
        ApiCall::OnlineTop { room_type, limit } => {
            let data = state.with_rooms(|rooms| api::online_top(rooms, &room_type, limit));
            reply(StatusCode::OK, JSON, api::ok_body(Some(data)))
        }
        ApiCall::OnlineRoom { room_type, rooms } => {
            let data = state.with_rooms(|totals| api::online_room(totals, &room_type, &rooms));
            reply(StatusCode::OK, JSON, api::ok_body(Some(data)))
        }
        ApiCall::OnlineTotal => {
            let data = api::online_total(state.total_conns());
            reply(StatusCode::OK, JSON, api::ok_body(Some(data)))
        }
        ApiCall::Metrics => {
            let rings = state.ring_levels();
            let uptime = state.started.elapsed().as_secs_f64();
            let text = state.with_shards(|shards| {
                let views = metrics::shard_views(shards, &rings, Instant::now());
                metrics::render(&views, &state.counters.borrow(), uptime)
            });
            let mut text = text;
            if let Some((topic, stats)) = &*state.ingest.borrow() {
                stats.render_prometheus(topic, &mut text);
            }
            if let Some(p) = &state.produce {
                p.render_prometheus(&mut text);
            }
            reply(StatusCode::OK, PROM_TEXT, text)
        }
        ApiCall::Health => health(state),
    }
}

async fn push(
    state: &Rc<ControlState>,
    target: PushTarget,
    op: u32,
    speed: u32,
    body: &[u8],
) -> Reply {
    let paced = speed > 0 && target == PushTarget::All && state.shard_count() > 1;
    let push = Push::new(target, op, body);
    if paced {
        if state.stopping.get() {
            return error_reply(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
        }
        // goim answers a broadcast once it is queued; delivery is paced after.
        glommio::spawn_local(state.clone().dispatch_paced(push, speed)).detach();
        return reply(StatusCode::OK, JSON, api::ok_body(None));
    }
    match state.dispatch(push).await {
        Ok(()) => reply(StatusCode::OK, JSON, api::ok_body(None)),
        Err(e) => error_reply(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// Kafka configured: produce native records and answer after the ack.
/// Delivery to this node's clients comes through its own consumer, as on
/// every other node. `speed` does not apply (native records carry none;
/// docs/api.md).
async fn push_via_kafka(
    state: &ControlState,
    kafka: &KafkaPush,
    target: PushTarget,
    op: u32,
    body: Bytes,
) -> Reply {
    if state.stopping.get() {
        return error_reply(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    }
    let kind = super::state::kind_index(&target);
    match kafka.push(&target, kind, op, body).await {
        Ok(_acks) => reply(StatusCode::OK, JSON, api::ok_body(None)),
        Err(e) => {
            tracing::warn!(error = %e, "HTTP push not produced to Kafka");
            error_reply(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

fn health(state: &ControlState) -> Reply {
    let rings = state.ring_levels();
    let stopped = rings.iter().filter(|r| r.2).count();
    let reporting = state.with_shards(|s| s.iter().filter(|s| s.report.is_some()).count());
    let ok = stopped == 0 && !state.stopping.get();
    let data = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "shards": rings.len(),
        "shards_reporting": reporting,
        "shards_stopped": stopped,
    });
    if ok {
        reply(StatusCode::OK, JSON, api::ok_body(Some(data)))
    } else {
        let body = serde_json::json!({
            "code": api::CODE_SERVER_ERR,
            "message": "not serving: a shard has stopped or shutdown is under way",
            "data": data,
        });
        reply(StatusCode::SERVICE_UNAVAILABLE, JSON, body.to_string())
    }
}
