//! API version negotiation, I/O free: for each API the highest version that
//! both this client (the `kafka-protocol` message definitions) and the broker
//! (its ApiVersions answer) support.

use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::protocol::Request;

/// Broker's supported version ranges by API key.
#[derive(Debug, Clone, Default)]
pub struct VersionTable {
    ranges: Vec<(i16, i16, i16)>,
}

/// Neither side supports a common version of an API.
#[derive(Debug, thiserror::Error)]
#[error("broker supports API {api} versions {broker:?}, client {client:?}: no common version")]
pub struct NoCommonVersion {
    pub api: i16,
    pub broker: Option<(i16, i16)>,
    pub client: (i16, i16),
}

impl VersionTable {
    pub fn from_response(resp: &ApiVersionsResponse) -> VersionTable {
        VersionTable {
            ranges: resp
                .api_keys
                .iter()
                .map(|k| (k.api_key, k.min_version, k.max_version))
                .collect(),
        }
    }

    /// Broker range of `api`, if it lists it.
    pub fn broker_range(&self, api: i16) -> Option<(i16, i16)> {
        self.ranges
            .iter()
            .find(|r| r.0 == api)
            .map(|&(_, min, max)| (min, max))
    }

    /// Highest version of `R` both sides support.
    pub fn pick<R: Request>(&self) -> Result<i16, NoCommonVersion> {
        let client = (R::VERSIONS.min, R::VERSIONS.max);
        let broker = self.broker_range(R::KEY);
        match broker {
            Some((bmin, bmax)) if bmin.max(client.0) <= bmax.min(client.1) => {
                Ok(bmax.min(client.1))
            }
            _ => Err(NoCommonVersion {
                api: R::KEY,
                broker,
                client,
            }),
        }
    }
}

/// Version of ApiVersions sent first, before anything is known: v3 (flexible).
/// A broker that does not know it answers with error UNSUPPORTED_VERSION in a
/// v0 response listing its own range; the client then retries at that max.
pub const API_VERSIONS_FIRST: i16 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{ApiKey, FetchRequest, ProduceRequest};
    use kafka_protocol::protocol::Message;

    fn table(entries: &[(ApiKey, i16, i16)]) -> VersionTable {
        let mut resp = ApiVersionsResponse::default();
        resp.api_keys = entries
            .iter()
            .map(|&(k, min, max)| {
                let mut v = ApiVersion::default();
                v.api_key = k as i16;
                v.min_version = min;
                v.max_version = max;
                v
            })
            .collect();
        VersionTable::from_response(&resp)
    }

    #[test]
    fn picks_highest_common_version() {
        let t = table(&[(ApiKey::Fetch, 4, 17), (ApiKey::Produce, 3, 99)]);
        assert_eq!(t.pick::<FetchRequest>().unwrap(), 17);
        assert_eq!(
            t.pick::<ProduceRequest>().unwrap(),
            ProduceRequest::VERSIONS.max
        );
    }

    #[test]
    fn missing_or_disjoint_api_is_an_error() {
        let t = table(&[(ApiKey::Fetch, 40, 50)]);
        assert!(t.pick::<FetchRequest>().is_err());
        assert!(t.pick::<ProduceRequest>().is_err());
    }
}
