//! Record formats (design §4), I/O free: what a Kafka record means as a push.
//!
//! - `native` (default): key = target (`room:<room_id>`, `user:<mid>`,
//!   `conn:<key>`, `all`), header `op` = decimal op (default 1000), value =
//!   message body.
//! - `goim`: value = goim's `PushMsg` protobuf, as goim's logic service
//!   produces it. Decoded by hand: seven fields, no nesting, and it keeps the
//!   body a zero-copy `Bytes` slice; `prost` would add a build step (or
//!   derive boilerplate) and copy `msg` into a `Vec`.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::batch::{RawRecord, RecordRef};
use crate::fanout::PushTarget;

/// goim's default application op when a record names none.
pub const DEFAULT_OP: u32 = 1000;

/// Which record format the push topic carries.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    #[default]
    Native,
    Goim,
}

/// A record decoded into a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedPush {
    pub target: PushTarget,
    pub op: u32,
    pub body: Bytes,
}

/// Why a record is not a valid push (it is counted and skipped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("record has no key")]
    NoKey,
    #[error("key is not a target (room:/user:/conn:/all)")]
    BadTarget,
    #[error("bad user id in key")]
    BadMid,
    #[error("empty room or connection key")]
    EmptyTarget,
    #[error("header op is not a decimal u32")]
    BadOp,
    #[error("record has no value")]
    NoValue,
    #[error("PushMsg protobuf: {0}")]
    Protobuf(&'static str),
    #[error("PushMsg type {0} unknown")]
    PushType(u64),
}

/// A record decoded into a push whose body is borrowed from the fetch
/// buffer (the ingest hot path copies it straight into the encoded push).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRef<'a> {
    pub target: PushTarget,
    pub op: u32,
    pub body: &'a [u8],
}

impl RecordFormat {
    pub fn decode(self, rec: &RawRecord) -> Result<DecodedPush, FormatError> {
        match self {
            RecordFormat::Native => decode_native(rec),
            RecordFormat::Goim => decode_goim(&rec.value().ok_or(FormatError::NoValue)?),
        }
    }

    /// Decodes a borrowed record; native targets come from `targets` (parsed
    /// once per distinct key, then shared).
    #[inline]
    pub fn decode_ref<'a>(
        self,
        rec: &RecordRef<'a>,
        targets: &mut TargetCache,
    ) -> Result<PushRef<'a>, FormatError> {
        match self {
            RecordFormat::Native => Ok(PushRef {
                target: targets.get(rec.key().ok_or(FormatError::NoKey)?)?,
                op: match rec.header(b"op") {
                    None => DEFAULT_OP,
                    Some(v) => parse_op(v.ok_or(FormatError::BadOp)?)?,
                },
                body: rec.value().unwrap_or_default(),
            }),
            RecordFormat::Goim => decode_goim_ref(rec.value().ok_or(FormatError::NoValue)?),
        }
    }
}

/// Native key → parsed target, so that a key seen again costs a hash lookup
/// and a reference-count bump instead of parsing and allocating its target.
/// Bounded: emptied when full (keys are typically a working set of rooms
/// and users).
#[derive(Debug)]
pub struct TargetCache {
    map: ahash::AHashMap<Box<[u8]>, PushTarget>,
    cap: usize,
}

impl Default for TargetCache {
    fn default() -> Self {
        Self::with_capacity(16_384)
    }
}

impl TargetCache {
    /// A cache holding at most `cap` keys.
    pub fn with_capacity(cap: usize) -> Self {
        TargetCache {
            map: ahash::AHashMap::default(),
            cap: cap.max(1),
        }
    }

    /// The target of native key `key` (see [`parse_target`]).
    #[inline]
    pub fn get(&mut self, key: &[u8]) -> Result<PushTarget, FormatError> {
        if let Some(t) = self.map.get(key) {
            return Ok(t.clone());
        }
        let t = parse_target(key)?;
        if self.map.len() >= self.cap {
            self.map.clear();
        }
        self.map.insert(key.into(), t.clone());
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Parses a native target key.
pub fn parse_target(key: &[u8]) -> Result<PushTarget, FormatError> {
    let text = std::str::from_utf8(key).map_err(|_| FormatError::BadTarget)?;
    if text == "all" {
        return Ok(PushTarget::All);
    }
    let (kind, rest) = text.split_once(':').ok_or(FormatError::BadTarget)?;
    match kind {
        "room" if !rest.is_empty() => Ok(PushTarget::Room(Arc::from(rest))),
        "user" => {
            let mid: i64 = rest.parse().map_err(|_| FormatError::BadMid)?;
            Ok(PushTarget::Mids(Arc::from([mid])))
        }
        "conn" if !rest.is_empty() => Ok(PushTarget::Keys(Arc::from([Box::<str>::from(rest)]))),
        "room" | "conn" => Err(FormatError::EmptyTarget),
        _ => Err(FormatError::BadTarget),
    }
}

/// Renders a target as its native key (for the producer).
pub fn target_key(target: &PushTarget) -> Vec<String> {
    match target {
        PushTarget::All => vec!["all".into()],
        PushTarget::Room(r) => vec![format!("room:{r}")],
        PushTarget::Mids(m) => m.iter().map(|m| format!("user:{m}")).collect(),
        PushTarget::Keys(k) => k.iter().map(|k| format!("conn:{k}")).collect(),
    }
}

fn decode_native(rec: &RawRecord) -> Result<DecodedPush, FormatError> {
    let target = parse_target(rec.key().ok_or(FormatError::NoKey)?)?;
    let op = match rec.header(b"op") {
        None => DEFAULT_OP,
        Some(v) => parse_op(v.ok_or(FormatError::BadOp)?)?,
    };
    Ok(DecodedPush {
        target,
        op,
        body: rec.value().unwrap_or_default(),
    })
}

fn parse_op(v: &[u8]) -> Result<u32, FormatError> {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return Err(FormatError::BadOp);
    }
    let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    u32::try_from(n).map_err(|_| FormatError::BadOp)
}

/// goim `PushMsg.Type`.
const PUSH: u64 = 0;
const ROOM: u64 = 1;
const BROADCAST: u64 = 2;

/// Decodes goim's `PushMsg { type=1, operation=2, speed=3, server=4,
/// room=5, keys=6 (repeated), msg=7 }`. Unknown fields are skipped, as
/// protobuf requires.
pub fn decode_goim(value: &Bytes) -> Result<DecodedPush, FormatError> {
    let p = decode_goim_ref(value)?;
    Ok(DecodedPush {
        target: p.target,
        op: p.op,
        body: if p.body.is_empty() {
            Bytes::new()
        } else {
            value.slice_ref(p.body)
        },
    })
}

/// [`decode_goim`] with the body borrowed from `value`.
pub fn decode_goim_ref(value: &[u8]) -> Result<PushRef<'_>, FormatError> {
    let mut buf = value;
    let (mut kind, mut op, mut room, mut keys, mut msg) = (PUSH, 0u32, None, Vec::new(), None);
    while buf.has_remaining() {
        let tag = pb_varint(&mut buf)?;
        let (field, wire) = (tag >> 3, tag & 7);
        match (field, wire) {
            (1, 0) => kind = pb_varint(&mut buf)?,
            (2, 0) => op = pb_varint(&mut buf)? as u32,
            (5, 2) => room = Some(pb_str(&mut buf)?),
            (6, 2) => keys.push(Box::<str>::from(pb_str(&mut buf)?)),
            (7, 2) => msg = Some(pb_len(&mut buf)?),
            (_, 0) => {
                pb_varint(&mut buf)?;
            }
            (_, 2) => {
                pb_len(&mut buf)?;
            }
            (_, 1) => skip(&mut buf, 8)?,
            (_, 5) => skip(&mut buf, 4)?,
            _ => return Err(FormatError::Protobuf("unsupported wire type")),
        }
    }
    let target = match kind {
        PUSH => PushTarget::Keys(Arc::from(keys)),
        ROOM => PushTarget::Room(Arc::from(room.ok_or(FormatError::EmptyTarget)?)),
        BROADCAST => PushTarget::All,
        other => return Err(FormatError::PushType(other)),
    };
    Ok(PushRef {
        target,
        op,
        body: msg.unwrap_or_default(),
    })
}

fn pb_varint(buf: &mut &[u8]) -> Result<u64, FormatError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err(FormatError::Protobuf("truncated varint"));
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(FormatError::Protobuf("varint too long"))
}

fn pb_len<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], FormatError> {
    let n = pb_varint(buf)? as usize;
    if buf.len() < n {
        return Err(FormatError::Protobuf("truncated field"));
    }
    let (field, rest) = buf.split_at(n);
    *buf = rest;
    Ok(field)
}

fn pb_str<'a>(buf: &mut &'a [u8]) -> Result<&'a str, FormatError> {
    std::str::from_utf8(pb_len(buf)?).map_err(|_| FormatError::Protobuf("bad UTF-8"))
}

fn skip(buf: &mut &[u8], n: usize) -> Result<(), FormatError> {
    if buf.len() < n {
        return Err(FormatError::Protobuf("truncated field"));
    }
    buf.advance(n);
    Ok(())
}

/// Encodes a goim `PushMsg` (for tests and tools that play goim's logic).
pub fn encode_goim(kind: u64, op: i32, room: &str, keys: &[&str], msg: &[u8]) -> Bytes {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field(out: &mut Vec<u8>, n: u64, data: &[u8]) {
        varint(out, n << 3 | 2);
        varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }
    let mut out = Vec::new();
    if kind != 0 {
        varint(&mut out, 1 << 3);
        varint(&mut out, kind);
    }
    varint(&mut out, 2 << 3);
    varint(&mut out, op as u32 as u64);
    if !room.is_empty() {
        field(&mut out, 5, room.as_bytes());
    }
    for k in keys {
        field(&mut out, 6, k.as_bytes());
    }
    field(&mut out, 7, msg);
    Bytes::from(out)
}

/// One record to produce.
#[derive(Debug, Clone, Default)]
pub struct OutRecord {
    pub key: Option<Bytes>,
    pub headers: Vec<(&'static str, Bytes)>,
    pub value: Option<Bytes>,
}

impl OutRecord {
    /// A native-format record: key = target, header `op`, value = body.
    pub fn native(target_key: &str, op: u32, body: Bytes) -> OutRecord {
        OutRecord {
            key: Some(Bytes::copy_from_slice(target_key.as_bytes())),
            headers: vec![("op", Bytes::from(op.to_string()))],
            value: Some(body),
        }
    }
}

/// Encodes `records` as one record batch v2 (what a Produce request carries).
pub fn encode_batch(
    records: &[OutRecord],
    compression: Compression,
    timestamp_ms: i64,
) -> Result<Bytes, String> {
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch where offset - sequence changes;
            // this keeps one batch whose base sequence is -1 (no idempotence).
            sequence: i as i32 - 1,
            timestamp: timestamp_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_static_str(k), Some(v.clone())))
                .collect::<IndexMap<_, _>>(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, recs.iter(), &opts).map_err(|e| format!("{e:#}"))?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests;
