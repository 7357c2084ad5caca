//! One connection to one Kafka broker on the glommio executor: connect,
//! ApiVersions, then requests whose responses are read back in order.
//! Several requests may be in flight (pipelining): [`BrokerConn::send`]
//! queues, [`BrokerConn::recv`] reads the oldest outstanding response.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::{Request, StrBytes};

use super::versions::{VersionTable, API_VERSIONS_FIRST};
use super::wire::{decode_response, encode_request, FrameReader};
use super::IngestError;

/// Kafka error code UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

pub struct BrokerConn {
    addr: String,
    stream: TcpStream,
    reader: FrameReader,
    out: BytesMut,
    client_id: String,
    next_correlation: i32,
    /// (correlation id, api key, version) of requests awaiting a response.
    in_flight: VecDeque<(i32, i16, i16)>,
    pub versions: VersionTable,
}

impl BrokerConn {
    /// Connects to `addr` (`host:port`) and negotiates API versions.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<BrokerConn, IngestError> {
        let io = |e: std::io::Error| IngestError::Io {
            addr: addr.to_string(),
            source: e,
        };
        let sock = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .map_err(io)?
            .next()
            .ok_or_else(|| io(std::io::Error::other("no address")))?;
        let stream = TcpStream::connect_timeout(sock, timeout)
            .await
            .map_err(|e| io(e.into()))?;
        stream.set_nodelay(true).map_err(|e| io(e.into()))?;
        let mut conn = BrokerConn {
            addr: addr.to_string(),
            stream,
            reader: FrameReader::new(),
            out: BytesMut::with_capacity(4096),
            client_id: client_id.to_string(),
            next_correlation: 1,
            in_flight: VecDeque::new(),
            versions: VersionTable::default(),
        };
        let mut version = API_VERSIONS_FIRST;
        let resp: ApiVersionsResponse = loop {
            let mut req = ApiVersionsRequest::default();
            req.client_software_name = StrBytes::from_static_str("corecast");
            req.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
            let resp = conn.call_at(&req, version, timeout).await?;
            if resp.error_code == UNSUPPORTED_VERSION && version > 0 {
                // The broker lists its ApiVersions range in a v0 answer.
                let max = resp
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == 18)
                    .map_or(0, |k| k.max_version);
                version = max.min(version - 1);
                continue;
            }
            if resp.error_code != 0 {
                return Err(IngestError::Broker {
                    what: "ApiVersions",
                    code: resp.error_code,
                });
            }
            break resp;
        };
        conn.versions = VersionTable::from_response(&resp);
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `req` at the negotiated version without waiting for the answer.
    pub async fn send<R: Request>(&mut self, req: &R) -> Result<(), IngestError> {
        let version = self.versions.pick::<R>()?;
        self.send_at(req, version).await
    }

    async fn send_at<R: Request>(&mut self, req: &R, version: i16) -> Result<(), IngestError> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        self.out.clear();
        encode_request(req, version, correlation, &self.client_id, &mut self.out)?;
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| IngestError::Io {
                addr: self.addr.clone(),
                source: e,
            })?;
        self.in_flight.push_back((correlation, R::KEY, version));
        Ok(())
    }

    /// Reads the response to the oldest outstanding request, which must be an `R`.
    pub async fn recv<R: Request>(
        &mut self,
        timeout: Duration,
    ) -> Result<R::Response, IngestError> {
        let (correlation, key, version) = self
            .in_flight
            .pop_front()
            .ok_or(IngestError::Protocol("recv with nothing in flight"))?;
        if key != R::KEY {
            return Err(IngestError::Protocol("response read as the wrong API"));
        }
        let frame = self.read_frame(timeout).await?;
        Ok(decode_response::<R>(frame, version, correlation)?)
    }

    /// Drops the last request from the in-flight list (acks = 0 produce,
    /// which the broker never answers).
    pub fn forget_last(&mut self) {
        self.in_flight.pop_back();
    }

    /// Number of requests awaiting a response.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Sends `req` and waits for its response (nothing else may be in flight).
    pub async fn call<R: Request>(
        &mut self,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Response, IngestError> {
        self.send(req).await?;
        self.recv::<R>(timeout).await
    }

    async fn call_at<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, IngestError> {
        self.send_at(req, version).await?;
        self.recv::<R>(timeout).await
    }

    async fn read_frame(&mut self, timeout: Duration) -> Result<Bytes, IngestError> {
        let addr = &self.addr;
        let io = |e: std::io::Error| IngestError::Io {
            addr: addr.clone(),
            source: e,
        };
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| io(e.into()))?;
        loop {
            if let Some(frame) = self.reader.next_frame()? {
                return Ok(frame);
            }
            let want = self.reader.wanted().clamp(4096, 1 << 20);
            let buf = self.reader.spare(want);
            let start = buf.len();
            buf.resize(start + want, 0);
            let n = match self.stream.read(&mut buf[start..]).await {
                Ok(n) => n,
                Err(e) => {
                    buf.truncate(start);
                    return Err(io(e));
                }
            };
            buf.truncate(start + n);
            if n == 0 {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}
