use super::*;
use crate::ingest::batch::Batches;

fn raw(key: Option<&str>, headers: Vec<(&'static str, Bytes)>, value: &str) -> RawRecord {
    let r = OutRecord {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        headers,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
    };
    let data = encode_batch(&[r], Compression::None, 0).unwrap();
    let b = Batches::new(data).next().unwrap().unwrap();
    b.records().unwrap().next().unwrap().unwrap()
}

#[test]
fn native_targets() {
    let op = || vec![("op", Bytes::from_static(b"1234"))];
    let cases = [
        (
            "room:live://1000",
            PushTarget::Room(Arc::from("live://1000")),
        ),
        ("user:42", PushTarget::Mids(Arc::from([42i64]))),
        (
            "conn:abc-1",
            PushTarget::Keys(Arc::from([Box::<str>::from("abc-1")])),
        ),
        ("all", PushTarget::All),
    ];
    for (key, target) in cases {
        let d = RecordFormat::Native
            .decode(&raw(Some(key), op(), "hi"))
            .unwrap();
        assert_eq!(d.target, target, "{key}");
        assert_eq!(d.op, 1234);
        assert_eq!(&d.body[..], b"hi");
    }
}

#[test]
fn native_default_op_and_errors() {
    let d = RecordFormat::Native
        .decode(&raw(Some("all"), vec![], "x"))
        .unwrap();
    assert_eq!(d.op, DEFAULT_OP);
    let bad = |key: Option<&str>, op: &'static [u8]| {
        RecordFormat::Native
            .decode(&raw(key, vec![("op", Bytes::from_static(op))], "x"))
            .unwrap_err()
    };
    assert_eq!(bad(None, b"1000"), FormatError::NoKey);
    assert_eq!(bad(Some("rooms:1"), b"1000"), FormatError::BadTarget);
    assert_eq!(bad(Some("everyone"), b"1000"), FormatError::BadTarget);
    assert_eq!(bad(Some("user:x"), b"1000"), FormatError::BadMid);
    assert_eq!(bad(Some("room:"), b"1000"), FormatError::EmptyTarget);
    assert_eq!(bad(Some("all"), b"-1"), FormatError::BadOp);
    assert_eq!(bad(Some("all"), b"99999999999"), FormatError::BadOp);
    assert_eq!(bad(Some("all"), b""), FormatError::BadOp);
}

#[test]
fn goim_push_msg_kinds() {
    let room = decode_goim(&encode_goim(1, 1000, "live://1000", &[], b"hello")).unwrap();
    assert_eq!(room.target, PushTarget::Room(Arc::from("live://1000")));
    assert_eq!(room.op, 1000);
    assert_eq!(&room.body[..], b"hello");
    let keys = decode_goim(&encode_goim(0, 1001, "", &["k1", "k2"], b"m")).unwrap();
    assert_eq!(
        keys.target,
        PushTarget::Keys(Arc::from([Box::<str>::from("k1"), Box::<str>::from("k2")]))
    );
    let all = decode_goim(&encode_goim(2, 1002, "", &[], b"")).unwrap();
    assert_eq!(all.target, PushTarget::All);
    assert_eq!(all.op, 1002);
}

#[test]
fn goim_bytes_from_goim_itself() {
    // PushMsg{Type: ROOM, Operation: 1000, Speed: 2, Server: "s1",
    // Room: "test://1", Msg: "m"} as Go's protobuf marshals it.
    let wire: &[u8] = &[
        0x08, 0x01, 0x10, 0xe8, 0x07, 0x18, 0x02, 0x22, 0x02, b's', b'1', 0x2a, 0x08, b't', b'e',
        b's', b't', b':', b'/', b'/', b'1', 0x3a, 0x01, b'm',
    ];
    let d = decode_goim(&Bytes::from_static(wire)).unwrap();
    assert_eq!(d.target, PushTarget::Room(Arc::from("test://1")));
    assert_eq!(d.op, 1000);
    assert_eq!(&d.body[..], b"m");
}

#[test]
fn goim_malformed() {
    assert!(decode_goim(&Bytes::from_static(&[0x3a, 0x05, b'x'])).is_err());
    assert!(decode_goim(&Bytes::from_static(&[0x08, 0x07])).is_err());
    assert!(decode_goim(&Bytes::from_static(&[0x0b])).is_err());
    assert!(decode_goim(&Bytes::from_static(&[0x08, 0x01])).is_err()); // room missing
}
