//! The goim logic HTTP API as pure functions: routing, parameter checking and
//! reply encoding. No I/O here; `server.rs` feeds requests in and writes the
//! replies out, which keeps every rule of the API unit-testable.

use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::params::{room_key, ParamError, Query};
use crate::fanout::PushTarget;

/// Every endpoint served by the control HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    PushKeys,
    PushMids,
    PushRoom,
    PushAll,
    OnlineTop,
    OnlineRoom,
    OnlineTotal,
    Metrics,
    Health,
}

impl Route {
    /// The one method the route accepts.
    pub fn method(self) -> Method {
        match self {
            Route::PushKeys | Route::PushMids | Route::PushRoom | Route::PushAll => Method::POST,
            _ => Method::GET,
        }
    }

    /// Stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Route::PushKeys => "push_keys",
            Route::PushMids => "push_mids",
            Route::PushRoom => "push_room",
            Route::PushAll => "push_all",
            Route::OnlineTop => "online_top",
            Route::OnlineRoom => "online_room",
            Route::OnlineTotal => "online_total",
            Route::Metrics => "metrics",
            Route::Health => "health",
        }
    }

    /// Whether the route reads a request body (the pushed message).
    pub fn has_body(self) -> bool {
        self.method() == Method::POST
    }
}

/// Why a request did not reach a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    /// The path exists but takes another method (the allowed one is given
    /// for the `Allow` header).
    MethodNotAllowed(Method),
}

/// Maps a method and path to a route. A trailing slash is tolerated.
pub fn route(method: &Method, path: &str) -> Result<Route, RouteError> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let r = match path {
        "/goim/push/keys" => Route::PushKeys,
        "/goim/push/mids" => Route::PushMids,
        "/goim/push/room" => Route::PushRoom,
        "/goim/push/all" => Route::PushAll,
        "/goim/online/top" => Route::OnlineTop,
        "/goim/online/room" => Route::OnlineRoom,
        "/goim/online/total" => Route::OnlineTotal,
        "/metrics" => Route::Metrics,
        "/health" => Route::Health,
        _ => return Err(RouteError::NotFound),
    };
    let allowed = r.method();
    // HEAD is served like GET by convention (hyper drops the body).
    if *method == allowed || (allowed == Method::GET && *method == Method::HEAD) {
        Ok(r)
    } else {
        Err(RouteError::MethodNotAllowed(allowed))
    }
}

/// A checked request, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiCall {
    /// Deliver the request body with `op` to `target`. `speed` (only for
    /// `all`) paces delivery at that many messages per second across the node;
    /// 0 means unpaced.
    Push {
        target: PushTarget,
        op: u32,
        speed: u32,
    },
    OnlineTop {
        room_type: String,
        limit: usize,
    },
    OnlineRoom {
        room_type: String,
        rooms: Vec<String>,
    },
    OnlineTotal,
    Metrics,
    Health,
}

fn bad(msg: impl Into<String>) -> ParamError {
    ParamError(msg.into())
}

/// Checks the query parameters of `route` (goim's names and meanings).
pub fn parse_call(route: Route, query: &Query) -> Result<ApiCall, ParamError> {
    Ok(match route {
        Route::PushKeys => {
            let op = query.required_num("operation")?;
            let keys: Vec<Box<str>> = query.list("keys").into_iter().map(Box::from).collect();
            if keys.is_empty() {
                return Err(bad("missing parameter `keys`"));
            }
            ApiCall::Push {
                target: PushTarget::Keys(Arc::from(keys)),
                op,
                speed: 0,
            }
        }
        Route::PushMids => {
            let op = query.required_num("operation")?;
            let mids = query
                .list("mids")
                .into_iter()
                .map(|m| {
                    m.parse::<i64>()
                        .map_err(|_| bad(format!("parameter `mids` holds a non-number: {m:?}")))
                })
                .collect::<Result<Vec<i64>, _>>()?;
            if mids.is_empty() {
                return Err(bad("missing parameter `mids`"));
            }
            ApiCall::Push {
                target: PushTarget::Mids(Arc::from(mids)),
                op,
                speed: 0,
            }
        }
        Route::PushRoom => {
            let op = query.required_num("operation")?;
            let room_type = query.required("type")?;
            let room = query.required("room")?;
            let key = room_key(room_type, room);
            ApiCall::Push {
                target: PushTarget::Room(Arc::from(key.as_str())),
                op,
                speed: 0,
            }
        }
        Route::PushAll => {
            let op = query.required_num("operation")?;
            let speed = query.optional_num("speed")?.unwrap_or(0);
            ApiCall::Push {
                target: PushTarget::All,
                op,
                speed,
            }
        }
        Route::OnlineTop => {
            let room_type = query.required("type")?.to_owned();
            let limit: usize = query.required_num("limit")?;
            if limit == 0 {
                return Err(bad("parameter `limit` must be at least 1"));
            }
            ApiCall::OnlineTop { room_type, limit }
        }
        Route::OnlineRoom => {
            let room_type = query.required("type")?.to_owned();
            let rooms: Vec<String> = query.list("rooms").into_iter().map(str::to_owned).collect();
            if rooms.is_empty() {
                return Err(bad("missing parameter `rooms`"));
            }
            ApiCall::OnlineRoom { room_type, rooms }
        }
        Route::OnlineTotal => ApiCall::OnlineTotal,
        Route::Metrics => ApiCall::Metrics,
        Route::Health => ApiCall::Health,
    })
}

/// goim's error code for a bad request (`RequestErr`).
pub const CODE_REQUEST_ERR: i32 = -400;
/// goim's error code for a server-side failure (`ServerErr`).
pub const CODE_SERVER_ERR: i32 = -500;

/// goim's success reply, keys in goim's order (`code`, `message`, `data`).
/// goim leaves `data` out when there is none.
pub fn ok_body(data: Option<Value>) -> String {
    match data {
        Some(d) => format!(r#"{{"code":0,"message":"","data":{d}}}"#),
        None => r#"{"code":0,"message":""}"#.to_owned(),
    }
}

/// goim-shaped error reply with the reason in `message`.
pub fn error_body(code: i32, message: &str) -> String {
    json!({"code": code, "message": message}).to_string()
}

/// goim code for an HTTP status we answer with.
pub fn goim_code(status: StatusCode) -> i32 {
    if status.is_server_error() {
        CODE_SERVER_ERR
    } else {
        CODE_REQUEST_ERR
    }
}

/// Node-wide online counts by room id (`"type://room"`), as merged from the
/// shards' reports.
pub type RoomTotals = ahash::AHashMap<Arc<str>, u64>;

/// `data` of `/goim/online/top`: the `limit` fullest rooms of `room_type`,
/// fullest first (ties by room name), as `[{"room_id": …, "count": …}]`
/// where `room_id` is the room without its type, like goim.
pub fn online_top(rooms: &RoomTotals, room_type: &str, limit: usize) -> Value {
    let prefix = format!("{room_type}://");
    let mut top: Vec<(&str, u64)> = rooms
        .iter()
        .filter(|(_, &n)| n > 0)
        .filter_map(|(k, &n)| k.strip_prefix(prefix.as_str()).map(|r| (r, n)))
        .collect();
    top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    top.truncate(limit);
    Value::Array(
        top.into_iter()
            .map(|(r, n)| json!({"room_id": r, "count": n}))
            .collect(),
    )
}

/// `data` of `/goim/online/room`: `{room: count}` for every asked room
/// (0 when nobody is in it).
pub fn online_room(rooms: &RoomTotals, room_type: &str, asked: &[String]) -> Value {
    let mut out = serde_json::Map::new();
    for r in asked {
        let n = rooms
            .get(room_key(room_type, r).as_str())
            .copied()
            .unwrap_or(0);
        out.insert(r.clone(), json!(n));
    }
    Value::Object(out)
}

/// `data` of `/goim/online/total`. goim also returns `ip_count`; corecast
/// does not track client addresses per shard, so only `conn_count` is given.
pub fn online_total(conns: u64) -> Value {
    json!({"conn_count": conns})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(route: Route, q: &str) -> Result<ApiCall, ParamError> {
        parse_call(route, &Query::parse(Some(q)).unwrap())
    }

    #[test]
    fn routes_and_methods() {
        assert_eq!(route(&Method::POST, "/goim/push/room"), Ok(Route::PushRoom));
        assert_eq!(
            route(&Method::POST, "/goim/push/room/"),
            Ok(Route::PushRoom)
        );
        assert_eq!(
            route(&Method::GET, "/goim/online/total"),
            Ok(Route::OnlineTotal)
        );
        assert_eq!(route(&Method::HEAD, "/health"), Ok(Route::Health));
        assert_eq!(
            route(&Method::GET, "/goim/push/all"),
            Err(RouteError::MethodNotAllowed(Method::POST))
        );
        assert_eq!(
            route(&Method::POST, "/metrics"),
            Err(RouteError::MethodNotAllowed(Method::GET))
        );
        assert_eq!(route(&Method::GET, "/goim/push"), Err(RouteError::NotFound));
        assert_eq!(route(&Method::GET, "/"), Err(RouteError::NotFound));
    }

    #[test]
    fn push_params() {
        assert_eq!(
            call(Route::PushRoom, "operation=1000&type=test&room=1").unwrap(),
            ApiCall::Push {
                target: PushTarget::Room(Arc::from("test://1")),
                op: 1000,
                speed: 0
            }
        );
        assert!(call(Route::PushRoom, "operation=1000&room=1").is_err());
        assert!(call(Route::PushRoom, "type=test&room=1").is_err());
        assert!(call(Route::PushRoom, "operation=-1&type=test&room=1").is_err());
        match call(Route::PushMids, "operation=1001&mids=1,2&mids=3").unwrap() {
            ApiCall::Push {
                target: PushTarget::Mids(m),
                op: 1001,
                ..
            } => {
                assert_eq!(&m[..], &[1, 2, 3])
            }
            other => panic!("{other:?}"),
        }
        assert!(call(Route::PushMids, "operation=1&mids=1,x").is_err());
        assert!(call(Route::PushMids, "operation=1").is_err());
        match call(Route::PushKeys, "operation=7000&keys=a&keys=b,c").unwrap() {
            ApiCall::Push {
                target: PushTarget::Keys(k),
                ..
            } => assert_eq!(k.len(), 3),
            other => panic!("{other:?}"),
        }
        assert!(call(Route::PushKeys, "operation=1&keys=").is_err());
        assert_eq!(
            call(Route::PushAll, "operation=1000&speed=50").unwrap(),
            ApiCall::Push {
                target: PushTarget::All,
                op: 1000,
                speed: 50
            }
        );
        assert_eq!(
            call(Route::PushAll, "operation=1000").unwrap(),
            ApiCall::Push {
                target: PushTarget::All,
                op: 1000,
                speed: 0
            }
        );
        assert!(call(Route::PushAll, "operation=1000&speed=fast").is_err());
    }

    #[test]
    fn online_params() {
        assert_eq!(
            call(Route::OnlineTop, "type=live&limit=5").unwrap(),
            ApiCall::OnlineTop {
                room_type: "live".into(),
                limit: 5
            }
        );
        assert!(call(Route::OnlineTop, "type=live&limit=0").is_err());
        assert!(call(Route::OnlineTop, "limit=3").is_err());
        assert_eq!(
            call(Route::OnlineRoom, "type=live&rooms=1,2&rooms=3").unwrap(),
            ApiCall::OnlineRoom {
                room_type: "live".into(),
                rooms: vec!["1".into(), "2".into(), "3".into()]
            }
        );
        assert!(call(Route::OnlineRoom, "type=live").is_err());
    }

    #[test]
    fn reply_shapes() {
        assert_eq!(ok_body(None), r#"{"code":0,"message":""}"#);
        assert_eq!(
            ok_body(Some(json!([1]))),
            r#"{"code":0,"message":"","data":[1]}"#
        );
        let v: Value = serde_json::from_str(&ok_body(Some(json!({"a": 1})))).unwrap();
        assert_eq!(v, json!({"code": 0, "message": "", "data": {"a": 1}}));
        let v: Value = serde_json::from_str(&error_body(-400, "missing `room`")).unwrap();
        assert_eq!(v, json!({"code": -400, "message": "missing `room`"}));
        assert_eq!(goim_code(StatusCode::BAD_REQUEST), -400);
        assert_eq!(goim_code(StatusCode::SERVICE_UNAVAILABLE), -500);
    }

    #[test]
    fn online_data() {
        let mut rooms = RoomTotals::default();
        rooms.insert(Arc::from("live://1"), 5);
        rooms.insert(Arc::from("live://2"), 9);
        rooms.insert(Arc::from("live://3"), 5);
        rooms.insert(Arc::from("livex://9"), 100);
        rooms.insert(Arc::from("live://empty"), 0);
        assert_eq!(
            online_top(&rooms, "live", 2),
            json!([{"room_id": "2", "count": 9}, {"room_id": "1", "count": 5}])
        );
        assert_eq!(online_top(&rooms, "none", 2), json!([]));
        assert_eq!(
            online_room(&rooms, "live", &["1".into(), "7".into()]),
            json!({"1": 5, "7": 0})
        );
        assert_eq!(online_total(4), json!({"conn_count": 4}));
    }
}
