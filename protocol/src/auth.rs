//! The JSON body of goim's op-7 auth packet and of its op-8 reply.
//!
//! Request: `{"mid":123,"key":"…","room_id":"live://1000","platform":"web",
//! "accepts":[1000,1001],"token":"…"}`. Only `mid` is required (a number, or
//! a string holding one); every other field may be missing or `null`, and
//! unknown fields are ignored. Reply: empty body on success, else
//! `{"code":401,"message":"…"}`.

use bytes::BufMut;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::AuthError;
use crate::packet::{encode_packet, op};

/// An op-7 auth request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRequest {
    /// Member (user) id.
    #[serde(deserialize_with = "de_mid")]
    pub mid: i64,
    /// Connection key; empty means the server assigns one.
    #[serde(default, deserialize_with = "de_null_default")]
    pub key: String,
    /// Room to join, `type://room`; empty for none.
    #[serde(default, deserialize_with = "de_null_default")]
    pub room_id: String,
    /// Client platform (`web`, `android`, …), informational.
    #[serde(default, deserialize_with = "de_null_default")]
    pub platform: String,
    /// Application ops the client wants to receive.
    #[serde(default, deserialize_with = "de_null_default")]
    pub accepts: Vec<u32>,
    /// Token to verify (JWT); goim's own clients send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl AuthRequest {
    /// Parses an op-7 body.
    pub fn parse(body: &[u8]) -> Result<AuthRequest, AuthError> {
        serde_json::from_slice(body).map_err(|e| AuthError::Malformed(e.to_string()))
    }

    /// Serializes to JSON (loadgen side).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("AuthRequest serializes")
    }

    /// The room as `(type, room)`; `Ok(None)` when `room_id` is empty.
    pub fn room(&self) -> Result<Option<(&str, &str)>, AuthError> {
        if self.room_id.is_empty() {
            return Ok(None);
        }
        split_room_id(&self.room_id)
            .map(Some)
            .ok_or_else(|| AuthError::BadRoomId(self.room_id.clone()))
    }
}

fn de_mid<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mid {
        Num(i64),
        Str(String),
    }
    match Mid::deserialize(d)? {
        Mid::Num(n) => Ok(n),
        Mid::Str(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

fn de_null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Splits a goim room id `type://room` into `(type, room)`.
///
/// `None` if there is no `://`. Either part may be empty, as in goim.
pub fn split_room_id(room_id: &str) -> Option<(&str, &str)> {
    room_id.split_once("://")
}

/// JSON body of a failed auth reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthErrorBody {
    /// HTTP-like code: 400 malformed request, 401 token refused.
    pub code: u16,
    /// Human-readable reason.
    pub message: String,
}

/// An op-8 auth reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthReply {
    /// Accepted: empty body.
    Ok,
    /// Refused: JSON error body; the server then sends op 6 and closes.
    Error(AuthErrorBody),
}

impl AuthReply {
    /// The reply for an auth error.
    pub fn from_error(e: &AuthError) -> AuthReply {
        let code = match e {
            AuthError::Unauthorized(_) => 401,
            _ => 400,
        };
        AuthReply::Error(AuthErrorBody {
            code,
            message: e.to_string(),
        })
    }

    /// The reply body (empty on success).
    pub fn body(&self) -> Vec<u8> {
        match self {
            AuthReply::Ok => Vec::new(),
            AuthReply::Error(b) => serde_json::to_vec(b).expect("AuthErrorBody serializes"),
        }
    }

    /// Appends the op-8 packet (echoing the auth request's `seq`).
    pub fn encode(&self, seq: u32, dst: &mut impl BufMut) {
        encode_packet(op::AUTH_REPLY, seq, &self.body(), dst);
    }

    /// Parses an op-8 body (loadgen side).
    pub fn parse(body: &[u8]) -> Result<AuthReply, AuthError> {
        if body.is_empty() {
            return Ok(AuthReply::Ok);
        }
        serde_json::from_slice(body)
            .map(AuthReply::Error)
            .map_err(|e| AuthError::Malformed(e.to_string()))
    }
}
