//! Op-7 token verification, done locally on the shard that holds the
//! connection (no network round trip): JWT signed with HS256 (shared secret)
//! or EdDSA (Ed25519 public key), `sub` = mid, `exp` required and honoured,
//! optional `rooms` claim listing the rooms the connection may join.
//! `auth.mode = "insecure"` accepts any token or none (goim's behaviour).

use std::sync::Arc;

use corecast_protocol::auth::AuthRequest;
use corecast_protocol::AuthError;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{AuthConfig, AuthMode};

/// Errors building a [`Verifier`] from the config.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read auth.eddsa_public_key {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.eddsa_public_key {path} is not an Ed25519 public key in PEM: {message}")]
    BadKey { path: String, message: String },
}

/// Who a verified connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub mid: i64,
    /// Rooms the token allows (`None`: any room).
    pub rooms: Option<Arc<[Box<str>]>>,
}

impl Identity {
    /// Whether the identity may join `room_id`.
    pub fn may_join(&self, room_id: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|r| r.iter().any(|x| &**x == room_id))
    }
}

/// Checks op-7 auth requests. Cheap to share: one per shard (cloned).
#[derive(Clone)]
pub struct Verifier {
    mode: AuthMode,
    hs256: Option<Arc<DecodingKey>>,
    eddsa: Option<Arc<DecodingKey>>,
}

#[derive(Deserialize)]
struct Claims {
    sub: SubClaim,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SubClaim {
    Num(i64),
    Str(String),
}

impl Verifier {
    pub fn from_config(cfg: &AuthConfig) -> Result<Verifier, AuthSetupError> {
        let hs256 = cfg
            .hs256_secret
            .as_ref()
            .map(|s| Arc::new(DecodingKey::from_secret(s.as_bytes())));
        let eddsa = match &cfg.eddsa_public_key {
            None => None,
            Some(p) => {
                let path = p.display().to_string();
                let pem = std::fs::read(p).map_err(|source| AuthSetupError::ReadKey {
                    path: path.clone(),
                    source,
                })?;
                let key = DecodingKey::from_ed_pem(&pem).map_err(|e| AuthSetupError::BadKey {
                    path,
                    message: e.to_string(),
                })?;
                Some(Arc::new(key))
            }
        };
        Ok(Verifier {
            mode: cfg.mode,
            hs256,
            eddsa,
        })
    }

    /// Verifier that accepts everything (tests, insecure mode).
    pub fn insecure() -> Verifier {
        Verifier {
            mode: AuthMode::Insecure,
            hs256: None,
            eddsa: None,
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Verifies the request's token; on success the identity to use (the
    /// token's `sub` wins; a body `mid` that disagrees with it is refused).
    pub fn verify(&self, req: &AuthRequest) -> Result<Identity, AuthError> {
        if self.mode == AuthMode::Insecure {
            return Ok(Identity {
                mid: req.mid,
                rooms: None,
            });
        }
        let unauthorized = |m: &str| AuthError::Unauthorized(m.to_owned());
        let token = req
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("token required"))?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthorized("malformed token"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_deref(),
            Algorithm::EdDSA => self.eddsa.as_deref(),
            _ => None,
        }
        .ok_or_else(|| unauthorized("token algorithm not accepted"))?;
        let mut v = Validation::new(header.alg);
        v.set_required_spec_claims(&["exp", "sub"]);
        v.validate_aud = false;
        v.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => unauthorized("token expired"),
                ErrorKind::InvalidSignature => unauthorized("bad token signature"),
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
                    unauthorized("token claims: sub must be a string mid and exp is required")
                }
                _ => unauthorized("invalid token"),
            }
        })?;
        let mid = match data.claims.sub {
            SubClaim::Num(n) => n,
            SubClaim::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| unauthorized("token sub is not a mid"))?,
        };
        if req.mid != 0 && req.mid != mid {
            return Err(unauthorized("mid does not match token sub"));
        }
        let rooms = data.claims.rooms.map(|r| {
            r.into_iter()
                .map(String::into_boxed_str)
                .collect::<Arc<[_]>>()
        });
        Ok(Identity { mid, rooms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn hs256_tokens() {
        let v = Verifier::from_config(&AuthConfig {
            mode: AuthMode::Jwt,
            hs256_secret: Some("s3cret".into()),
            eddsa_public_key: None,
        })
        .unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let mut req = AuthRequest {
            token: Some(token(
                "s3cret",
                serde_json::json!({"sub":"42","exp":exp,"rooms":["live://1"]}),
            )),
            ..Default::default()
        };
        let id = v.verify(&req).unwrap();
        assert_eq!(id.mid, 42);
        assert!(id.may_join("live://1") && !id.may_join("live://2"));
        req.mid = 7;
        assert!(v.verify(&req).is_err(), "mid must match sub");
        req.mid = 0;
        req.token = Some(token("other", serde_json::json!({"sub":42,"exp":exp})));
        assert!(v.verify(&req).is_err());
        req.token = Some(token(
            "s3cret",
            serde_json::json!({"sub":42,"exp":exp - 1200}),
        ));
        assert!(v.verify(&req).is_err());
        req.token = None;
        assert!(v.verify(&req).is_err());
        assert!(Verifier::insecure().verify(&req).is_ok());
    }

    #[test]
    fn eddsa_tokens() {
        let dir = std::env::temp_dir().join(format!("cc-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pubkey = dir.join("pub.pem");
        std::fs::write(&pubkey, "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA3zPMQ+dvm0azUhi2A0JvgJONbye5P55qC5R08r/eGp0=\n-----END PUBLIC KEY-----\n").unwrap();
        let v = Verifier::from_config(&AuthConfig {
            mode: AuthMode::Jwt,
            hs256_secret: None,
            eddsa_public_key: Some(pubkey),
        })
        .unwrap();
        let k = EncodingKey::from_ed_pem(b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBkVTqrfTqGUATAWy6QObLxYZpfXTqxOfkIamNPaF0kB\n-----END PRIVATE KEY-----\n").unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let t = encode(
            &Header::new(Algorithm::EdDSA),
            &serde_json::json!({"sub":"43","exp":exp}),
            &k,
        )
        .unwrap();
        let req = AuthRequest {
            token: Some(t),
            ..Default::default()
        };
        assert_eq!(v.verify(&req).unwrap().mid, 43);
    }
}
