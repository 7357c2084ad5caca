//! HS256 JWTs minted per client when the server verifies tokens.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// A token for `mid`, valid until an hour after `until`.
pub fn mint_hs256(secret: &[u8], mid: i64, until: Instant) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let exp = now + until.saturating_duration_since(Instant::now()).as_secs() + 3600;
    let claims = Claims {
        sub: mid.to_string(),
        exp,
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 encoding of plain claims cannot fail")
}
