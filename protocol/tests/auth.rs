//! Auth JSON body and reply.

use corecast_protocol::auth::{split_room_id, AuthErrorBody, AuthReply, AuthRequest};
use corecast_protocol::packet::{op, parse_packet};
use corecast_protocol::AuthError;

#[test]
fn full_goim_body() {
    let body = br#"{"mid":123,"key":"k1","room_id":"live://1000","platform":"web","accepts":[1000,1001],"token":"t"}"#;
    let req = AuthRequest::parse(body).unwrap();
    assert_eq!(
        req,
        AuthRequest {
            mid: 123,
            key: "k1".into(),
            room_id: "live://1000".into(),
            platform: "web".into(),
            accepts: vec![1000, 1001],
            token: Some("t".into()),
        }
    );
    assert_eq!(req.room(), Ok(Some(("live", "1000"))));
    assert_eq!(AuthRequest::parse(&req.to_json()).unwrap(), req);
}

#[test]
fn only_mid_is_required() {
    let req = AuthRequest::parse(br#"{"mid":7}"#).unwrap();
    assert_eq!(
        req,
        AuthRequest {
            mid: 7,
            ..AuthRequest::default()
        }
    );
    assert_eq!(req.room(), Ok(None));
    assert!(matches!(
        AuthRequest::parse(br#"{"key":"x"}"#),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn nulls_unknown_fields_and_string_mid_are_tolerated() {
    let req = AuthRequest::parse(
        br#"{"mid":"42","key":null,"room_id":null,"platform":null,"accepts":null,"token":null,"extra":{"a":1}}"#,
    )
    .unwrap();
    assert_eq!(
        req,
        AuthRequest {
            mid: 42,
            ..AuthRequest::default()
        }
    );
}

#[test]
fn malformed_bodies_are_rejected() {
    for body in [
        &b""[..],
        b"[]",
        b"{",
        br#"{"mid":1.5}"#,
        br#"{"mid":"x"}"#,
        br#"{"mid":1,"accepts":[-1]}"#,
    ] {
        let e = AuthRequest::parse(body).unwrap_err();
        assert!(matches!(e, AuthError::Malformed(_)), "{body:?}");
        assert_eq!(e.close_code(), 1002);
    }
}

#[test]
fn room_id_split() {
    assert_eq!(split_room_id("live://1000"), Some(("live", "1000")));
    assert_eq!(split_room_id("a://b://c"), Some(("a", "b://c")));
    assert_eq!(split_room_id("://"), Some(("", "")));
    assert_eq!(split_room_id("live:1000"), None);
    let req = AuthRequest {
        mid: 1,
        room_id: "nope".into(),
        ..AuthRequest::default()
    };
    assert_eq!(req.room(), Err(AuthError::BadRoomId("nope".into())));
}

#[test]
fn replies() {
    let mut out = Vec::new();
    AuthReply::Ok.encode(5, &mut out);
    let (p, _) = parse_packet(&out, 4096).unwrap().unwrap();
    assert_eq!((p.op, p.seq, p.body), (op::AUTH_REPLY, 5, &b""[..]));
    assert_eq!(AuthReply::parse(p.body), Ok(AuthReply::Ok));

    let err = AuthError::Unauthorized("token expired".into());
    assert_eq!(err.close_code(), 1008);
    let reply = AuthReply::from_error(&err);
    assert_eq!(
        String::from_utf8(reply.body()).unwrap(),
        r#"{"code":401,"message":"unauthorized: token expired"}"#
    );
    assert_eq!(
        AuthReply::parse(&reply.body()),
        Ok(AuthReply::Error(AuthErrorBody {
            code: 401,
            message: "unauthorized: token expired".into()
        }))
    );
    let bad = AuthReply::from_error(&AuthError::BadRoomId("x".into()));
    assert!(matches!(
        bad,
        AuthReply::Error(AuthErrorBody { code: 400, .. })
    ));
}
