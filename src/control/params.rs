//! Query-string parsing for the goim logic API: pure functions, no I/O.
//!
//! goim binds its parameters with gin, which accepts list parameters as
//! repeated keys (`keys=a&keys=b`); goim's tools also send comma-separated
//! lists (`mids=1,2,3`). Both forms are accepted and may be mixed.

use std::fmt;

/// Why a request's parameters were rejected (reported as HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError(pub String);

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParamError {}

fn err(msg: impl Into<String>) -> ParamError {
    ParamError(msg.into())
}

/// Decoded `name=value` pairs of a query string, in order.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses an `application/x-www-form-urlencoded` query string.
    pub fn parse(raw: Option<&str>) -> Result<Self, ParamError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((percent_decode(k)?, percent_decode(v)?));
        }
        Ok(Self { pairs })
    }

    /// The first value of `name`, if present.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, which must be present and non-empty.
    pub fn required(&self, name: &str) -> Result<&str, ParamError> {
        match self.first(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(err(format!("missing parameter `{name}`"))),
        }
    }

    /// Every non-empty item of `name`, over repeated keys and comma lists.
    pub fn list(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// A required integer parameter.
    pub fn required_num<T: std::str::FromStr>(&self, name: &str) -> Result<T, ParamError> {
        let v = self.required(name)?;
        v.parse()
            .map_err(|_| err(format!("parameter `{name}` is not a valid number: {v:?}")))
    }

    /// An optional integer parameter (absent or empty gives `None`).
    pub fn optional_num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ParamError> {
        match self.first(name) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| err(format!("parameter `{name}` is not a valid number: {v:?}"))),
        }
    }
}

/// Decodes `%XX` escapes and `+` (space) of a form-encoded component.
pub fn percent_decode(s: &str) -> Result<String, ParamError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| err(format!("bad percent escape in {s:?}")))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| err(format!("query component is not UTF-8: {s:?}")))
}

/// A goim room id as clients join it: `type://room`.
pub fn room_key(room_type: &str, room: &str) -> String {
    format!("{room_type}://{room}")
}

/// Splits `type://room` back into its parts.
pub fn split_room_key(key: &str) -> Option<(&str, &str)> {
    key.split_once("://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_comma_lists_merge() {
        let q = Query::parse(Some("keys=a,b&keys=c&keys=&x=1")).unwrap();
        assert_eq!(q.list("keys"), vec!["a", "b", "c"]);
        assert!(q.list("nope").is_empty());
    }

    #[test]
    fn decodes_escapes_and_plus() {
        let q = Query::parse(Some("room=live%3A%2F%2F1&t=a+b")).unwrap();
        assert_eq!(q.first("room"), Some("live://1"));
        assert_eq!(q.first("t"), Some("a b"));
        assert!(Query::parse(Some("a=%zz")).is_err());
        assert!(Query::parse(Some("a=%4")).is_err());
        assert!(Query::parse(Some("a=%ff")).is_err());
    }

    #[test]
    fn numbers_are_checked() {
        let q = Query::parse(Some("operation=1000&speed=&bad=x1")).unwrap();
        assert_eq!(q.required_num::<u32>("operation").unwrap(), 1000);
        assert_eq!(q.optional_num::<u32>("speed").unwrap(), None);
        assert!(q.required_num::<u32>("bad").is_err());
        assert!(q.required_num::<u32>("missing").is_err());
        assert!(q.optional_num::<u32>("bad").is_err());
    }

    #[test]
    fn room_keys_round_trip() {
        assert_eq!(room_key("live", "1000"), "live://1000");
        assert_eq!(split_room_key("live://1000"), Some(("live", "1000")));
        assert_eq!(split_room_key("nope"), None);
    }
}
