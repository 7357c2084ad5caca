//! Server configuration: a TOML file, overridden by command-line flags and
//! `CORECAST_*` environment variables (flags win over variables, both win
//! over the file, the file wins over the defaults).
//!
//! ```toml
//! [listen]
//! ws = "0.0.0.0:3102"      # WebSocket, GET /sub
//! tcp = "0.0.0.0:3101"     # raw goim packets
//! http = "0.0.0.0:3111"    # HTTP control API
//! backlog = 65535
//! tcp_fastopen_qlen = 4096 # TCP Fast Open queue per listener; 0 = off
//!
//! [shards]
//! count = 0                # 0 = one per CPU in `cpus`; may exceed the CPU count
//! cpus = "0-1"             # CPUs shards are pinned to, round robin; "" = all allowed
//! max_conns = 0            # per shard (its io_uring file table); 0 = RLIMIT_NOFILE
//! recv_buffers = 0         # provided receive buffers per shard; 0 = auto
//! recv_buffer_size = 4096
//!
//! [limits]
//! max_body = 4096
//! send_cap = 262144        # bytes queued per connection
//! send_policy = "close"    # or "drop"
//! handshake_timeout_secs = 10
//! heartbeat_interval_secs = 30
//! http_max_requests_per_conn = 10000  # control API requests per connection
//!
//! [fanout]
//! batch_window_ms = 0      # room batching window; 0 = one shard loop turn
//!
//! [auth]
//! mode = "jwt"             # or "insecure"
//! hs256_secret = "…"
//! eddsa_public_key = "/etc/corecast/jwt.pub.pem"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors loading or validating a configuration (each a one-line message).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("bad config: {0}")]
    Invalid(String),
}

/// Whole server configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub shards: ShardsConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    /// Delivery to clients (`[fanout]`): room batching.
    pub fanout: FanoutConfig,
    /// Kafka ingest (`[kafka]`); no brokers = embedded mode.
    pub kafka: crate::ingest::KafkaConfig,
}

/// Listening sockets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// WebSocket address (goim default port 3102).
    pub ws: SocketAddr,
    /// Raw TCP goim address (goim default port 3101).
    pub tcp: SocketAddr,
    /// HTTP control API address (goim default port 3111).
    pub http: SocketAddr,
    /// listen(2) backlog of every shard listener.
    pub backlog: u32,
    /// TCP Fast Open queue length of every WS/TCP listener (TCP_FASTOPEN):
    /// how many Fast Open connections may wait for their handshake's final
    /// ACK; past it a SYN's data is ignored and the client sends it again
    /// after an ordinary handshake. 0 = off. Takes effect only when
    /// `net.ipv4.tcp_fastopen` has bit 2 (server) set.
    pub tcp_fastopen_qlen: u32,
    /// Path of the WebSocket upgrade.
    pub ws_path: String,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            ws: SocketAddr::from(([0, 0, 0, 0], 3102)),
            tcp: SocketAddr::from(([0, 0, 0, 0], 3101)),
            http: SocketAddr::from(([0, 0, 0, 0], 3111)),
            backlog: 65535,
            tcp_fastopen_qlen: 4096,
            ws_path: "/sub".into(),
        }
    }
}

/// Shard threads and their io_uring resources.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardsConfig {
    /// Number of shards; 0 = one per CPU of `cpus`. Several shards may share
    /// a CPU (each ring's file table is capped at RLIMIT_NOFILE, so more
    /// connections than that per process need more shards than cores).
    pub count: usize,
    /// CPU list ("0-3,6"); shards are pinned round robin. Empty = every CPU
    /// the process may run on.
    pub cpus: String,
    /// Connections per shard (size of its registered file table); 0 = the
    /// RLIMIT_NOFILE soft limit, the kernel's cap for a ring's table.
    pub max_conns: u32,
    /// Submission queue entries per shard ring.
    pub ring_entries: u32,
    /// Provided receive buffers per shard (power of two); 0 = auto: 512
    /// divided among the shards sharing a CPU, at least 64.
    pub recv_buffers: u32,
    /// Size of each provided receive buffer.
    pub recv_buffer_size: u32,
    /// How often each shard reports to control.
    pub report_interval_ms: u64,
    /// Capacity of each control → shard ring (messages).
    pub ring_capacity: usize,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        ShardsConfig {
            count: 0,
            cpus: String::new(),
            max_conns: 0,
            ring_entries: 4096,
            recv_buffers: 0,
            recv_buffer_size: 4096,
            report_interval_ms: 1000,
            ring_capacity: 65536,
        }
    }
}

/// What happens to a connection whose queued output passes `send_cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SendPolicy {
    /// Close it (goim op 6 / WS close 1008), counted.
    Close,
    /// Drop new messages for it (goim's behaviour), counted.
    Drop,
}

/// Per-connection limits and deadlines.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest packet body accepted from a client.
    pub max_body: usize,
    /// Bytes of queued output per connection before `send_policy` applies.
    pub send_cap: usize,
    pub send_policy: SendPolicy,
    /// WS handshake plus op-7 auth must complete within this.
    pub handshake_timeout_secs: u32,
    /// Clients send op 2 at least this often; silent for 2 intervals plus
    /// one second means closed.
    pub heartbeat_interval_secs: u32,
    /// How long a closing connection may take to flush its goodbye.
    pub close_linger_secs: u32,
    /// Control API requests served on one connection before it is closed
    /// (every request already read is answered first; the last reply says
    /// `Connection: close`).
    pub http_max_requests_per_conn: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body: 4096,
            send_cap: 256 * 1024,
            send_policy: SendPolicy::Close,
            handshake_timeout_secs: 10,
            heartbeat_interval_secs: 30,
            close_linger_secs: 2,
            http_max_requests_per_conn: 10_000,
        }
    }
}

/// How pushes reach clients.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FanoutConfig {
    /// Room batching window in milliseconds: a room's pushes are held from
    /// its first pending push until the window ends, then sent to each
    /// member as one op-9 container (TCP: the packets back to back).
    /// 0 = what reaches the shard during one loop turn (no added latency).
    /// Pushes to keys, mids and `all` are never held.
    pub batch_window_ms: u64,
}

/// Most `fanout.batch_window_ms` (goim used up to 1 s).
pub const MAX_BATCH_WINDOW_MS: u64 = 10_000;

/// How op-7 tokens are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// JWT verified locally (HS256 secret and/or EdDSA public key).
    Jwt,
    /// Any token or none (goim's behaviour; for goim clients and benchmarks).
    Insecure,
}

/// Token verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Default `insecure` so `corecast serve` works with no config (a
    /// warning is logged at start); production sets `jwt`.
    pub mode: AuthMode,
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<String>,
    /// PEM file of the Ed25519 public key for EdDSA tokens.
    pub eddsa_public_key: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Insecure,
            hs256_secret: None,
            eddsa_public_key: None,
        }
    }
}

/// Command-line / environment overrides (flattened into each subcommand).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// TOML config file.
    #[arg(long, short = 'c', env = "CORECAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// WebSocket listen address.
    #[arg(long, env = "CORECAST_WS_LISTEN")]
    pub ws_listen: Option<SocketAddr>,
    /// Raw TCP listen address.
    #[arg(long, env = "CORECAST_TCP_LISTEN")]
    pub tcp_listen: Option<SocketAddr>,
    /// HTTP API listen address.
    #[arg(long, env = "CORECAST_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// TCP Fast Open queue per listener (0 = off).
    #[arg(long, env = "CORECAST_TCP_FASTOPEN_QLEN")]
    pub tcp_fastopen_qlen: Option<u32>,
    /// Number of shards (0 = one per CPU).
    #[arg(long, env = "CORECAST_SHARDS")]
    pub shards: Option<usize>,
    /// CPU list for shards, e.g. "0-1".
    #[arg(long, env = "CORECAST_CPUS")]
    pub cpus: Option<String>,
    /// Connections per shard (0 = RLIMIT_NOFILE).
    #[arg(long, env = "CORECAST_MAX_CONNS_PER_SHARD")]
    pub max_conns_per_shard: Option<u32>,
    /// Provided receive buffers per shard (0 = auto).
    #[arg(long, env = "CORECAST_RECV_BUFFERS")]
    pub recv_buffers: Option<u32>,
    /// Size of each provided receive buffer.
    #[arg(long, env = "CORECAST_RECV_BUFFER_SIZE")]
    pub recv_buffer_size: Option<u32>,
    /// Shard report interval in milliseconds.
    #[arg(long, env = "CORECAST_REPORT_INTERVAL_MS")]
    pub report_interval_ms: Option<u64>,
    /// Largest client packet body.
    #[arg(long, env = "CORECAST_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Queued output bytes per connection.
    #[arg(long, env = "CORECAST_SEND_CAP")]
    pub send_cap: Option<usize>,
    /// Over the send cap: close or drop.
    #[arg(long, env = "CORECAST_SEND_POLICY")]
    pub send_policy: Option<SendPolicy>,
    /// Handshake + auth deadline in seconds.
    #[arg(long, env = "CORECAST_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<u32>,
    /// Client heartbeat interval in seconds.
    #[arg(long, env = "CORECAST_HEARTBEAT_INTERVAL_SECS")]
    pub heartbeat_interval_secs: Option<u32>,
    /// Control API requests per connection before it is closed.
    #[arg(long, env = "CORECAST_HTTP_MAX_REQUESTS_PER_CONN")]
    pub http_max_requests_per_conn: Option<u32>,
    /// Room batching window in ms (0 = one shard loop turn).
    #[arg(long, env = "CORECAST_BATCH_WINDOW_MS")]
    pub batch_window_ms: Option<u64>,
    /// Token checking: jwt or insecure.
    #[arg(long, env = "CORECAST_AUTH_MODE")]
    pub auth_mode: Option<AuthMode>,
    /// HS256 secret for JWTs.
    #[arg(long, env = "CORECAST_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// PEM file of the EdDSA public key for JWTs.
    #[arg(long, env = "CORECAST_JWT_EDDSA_PUBLIC_KEY")]
    pub jwt_eddsa_public_key: Option<PathBuf>,
    /// Kafka bootstrap brokers, comma separated (enables Kafka ingest).
    #[arg(long, env = "CORECAST_KAFKA_BROKERS", value_delimiter = ',')]
    pub kafka_brokers: Option<Vec<String>>,
    /// Kafka push topic.
    #[arg(long, env = "CORECAST_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// Kafka record format: native or goim.
    #[arg(long, env = "CORECAST_KAFKA_FORMAT")]
    pub kafka_format: Option<crate::ingest::RecordFormat>,
    /// Where partitions start: latest or earliest.
    #[arg(long, env = "CORECAST_KAFKA_START")]
    pub kafka_start: Option<crate::ingest::StartFrom>,
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().replace('\n', " "),
        })
    }

    /// File (if any) + overrides, validated.
    pub fn load(o: &Overrides) -> Result<Config, ConfigError> {
        let mut c = match &o.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        c.apply(o);
        c.validate()?;
        Ok(c)
    }

    fn apply(&mut self, o: &Overrides) {
        fn set<T: Clone>(dst: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *dst = v.clone();
            }
        }
        set(&mut self.listen.ws, &o.ws_listen);
        set(&mut self.listen.tcp, &o.tcp_listen);
        set(&mut self.listen.http, &o.http_listen);
        set(&mut self.listen.tcp_fastopen_qlen, &o.tcp_fastopen_qlen);
        set(&mut self.shards.count, &o.shards);
        set(&mut self.shards.cpus, &o.cpus);
        set(&mut self.shards.max_conns, &o.max_conns_per_shard);
        set(&mut self.shards.recv_buffers, &o.recv_buffers);
        set(&mut self.shards.recv_buffer_size, &o.recv_buffer_size);
        set(&mut self.shards.report_interval_ms, &o.report_interval_ms);
        set(&mut self.limits.max_body, &o.max_body);
        set(&mut self.limits.send_cap, &o.send_cap);
        set(&mut self.limits.send_policy, &o.send_policy);
        set(
            &mut self.limits.handshake_timeout_secs,
            &o.handshake_timeout_secs,
        );
        set(
            &mut self.limits.heartbeat_interval_secs,
            &o.heartbeat_interval_secs,
        );
        set(
            &mut self.limits.http_max_requests_per_conn,
            &o.http_max_requests_per_conn,
        );
        set(&mut self.fanout.batch_window_ms, &o.batch_window_ms);
        set(&mut self.auth.mode, &o.auth_mode);
        if o.jwt_hs256_secret.is_some() {
            self.auth.hs256_secret = o.jwt_hs256_secret.clone();
        }
        if o.jwt_eddsa_public_key.is_some() {
            self.auth.eddsa_public_key = o.jwt_eddsa_public_key.clone();
        }
        set(&mut self.kafka.brokers, &o.kafka_brokers);
        set(&mut self.kafka.topic, &o.kafka_topic);
        set(&mut self.kafka.format, &o.kafka_format);
        set(&mut self.kafka.start, &o.kafka_start);
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.ws == self.listen.tcp && self.listen.ws.port() != 0 {
            return bad(format!(
                "listen.ws and listen.tcp are both {}",
                self.listen.ws
            ));
        }
        if !self.listen.ws_path.starts_with('/') {
            return bad(format!(
                "listen.ws_path {:?} must start with '/'",
                self.listen.ws_path
            ));
        }
        parse_cpu_list(&self.shards.cpus).map_err(ConfigError::Invalid)?;
        if self.limits.http_max_requests_per_conn == 0 {
            return bad("limits.http_max_requests_per_conn must be > 0".into());
        }
        if self.shards.count > 4096 {
            return bad(format!(
                "shards.count {} is more than 4096",
                self.shards.count
            ));
        }
        let rb = self.shards.recv_buffers;
        if rb != 0 && (!rb.is_power_of_two() || rb > 32768) {
            return bad(format!(
                "shards.recv_buffers {rb} must be a power of two ≤ 32768 (or 0 = auto)"
            ));
        }
        if !(256..=1 << 20).contains(&self.shards.recv_buffer_size) {
            return bad(format!(
                "shards.recv_buffer_size {} must be within 256..=1048576",
                self.shards.recv_buffer_size
            ));
        }
        if !(8..=32768).contains(&self.shards.ring_entries) {
            return bad(format!(
                "shards.ring_entries {} must be within 8..=32768",
                self.shards.ring_entries
            ));
        }
        if self.shards.report_interval_ms == 0 {
            return bad("shards.report_interval_ms must be > 0".into());
        }
        if self.limits.max_body == 0 || self.limits.max_body > 16 << 20 {
            return bad(format!(
                "limits.max_body {} must be within 1..=16777216",
                self.limits.max_body
            ));
        }
        if self.limits.send_cap < 1024 {
            return bad(format!(
                "limits.send_cap {} must be at least 1024",
                self.limits.send_cap
            ));
        }
        if self.limits.handshake_timeout_secs == 0 || self.limits.heartbeat_interval_secs == 0 {
            return bad(
                "limits.handshake_timeout_secs and heartbeat_interval_secs must be > 0".into(),
            );
        }
        if self.fanout.batch_window_ms > MAX_BATCH_WINDOW_MS {
            return bad(format!(
                "fanout.batch_window_ms {} is more than {MAX_BATCH_WINDOW_MS}",
                self.fanout.batch_window_ms
            ));
        }
        if self.auth.mode == AuthMode::Jwt
            && self.auth.hs256_secret.is_none()
            && self.auth.eddsa_public_key.is_none()
        {
            return bad(
                "auth.mode = \"jwt\" needs auth.hs256_secret or auth.eddsa_public_key \
                 (or --jwt-hs256-secret / CORECAST_JWT_HS256_SECRET)"
                    .into(),
            );
        }
        if matches!(&self.auth.hs256_secret, Some(s) if s.is_empty()) {
            return bad("auth.hs256_secret is empty".into());
        }
        Ok(())
    }

    /// CPUs the shards are pinned to, round robin (never empty).
    pub fn shard_cpus(&self) -> Vec<usize> {
        let list = parse_cpu_list(&self.shards.cpus).unwrap_or_default();
        if list.is_empty() {
            allowed_cpus()
        } else {
            list
        }
    }

    /// Number of shards (`count`, or one per shard CPU).
    pub fn shard_count(&self) -> usize {
        if self.shards.count == 0 {
            self.shard_cpus().len().max(1)
        } else {
            self.shards.count
        }
    }

    /// Provided receive buffers per shard (resolving `0` = auto: 512 split
    /// among the shards that share a CPU, at least 64, a power of two).
    pub fn recv_buffers_per_shard(&self) -> u32 {
        if self.shards.recv_buffers != 0 {
            return self.shards.recv_buffers;
        }
        let per_cpu = self
            .shard_count()
            .div_ceil(self.shard_cpus().len().max(1))
            .max(1) as u32;
        (512 / per_cpu).max(64).next_power_of_two().min(512)
    }
}

/// Parses a CPU list like `"0-3,6"`. Empty input gives an empty list.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list {s:?}: {part:?} is not N or N-M");
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let n: usize = part.parse().map_err(|_| bad())?;
                (n, n)
            }
        };
        if a > b || b >= 4096 {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// CPUs this process may run on (sched_getaffinity), falling back to 0..n.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let v: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect();
            if !v.is_empty() {
                return v;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_cpu_lists_parse() {
        Config::default().validate().unwrap();
        assert_eq!(parse_cpu_list("0-2, 5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        let c: Config =
            toml::from_str("[limits]\nsend_policy = \"drop\"\n[shards]\ncount = 8").unwrap();
        assert_eq!(c.limits.send_policy, SendPolicy::Drop);
        assert_eq!(c.shard_count(), 8);
        let c: Config = toml::from_str("[fanout]\nbatch_window_ms = 200").unwrap();
        assert_eq!(c.fanout.batch_window_ms, 200);
        assert_eq!(Config::default().fanout.batch_window_ms, 0);
        let mut w = Config::default();
        w.fanout.batch_window_ms = MAX_BATCH_WINDOW_MS + 1;
        assert!(w.validate().is_err());
        assert!(toml::from_str::<Config>("[limits]\nsend_cap_typo = 1").is_err());
        let mut j = Config::default();
        j.auth.mode = AuthMode::Jwt;
        assert!(j.validate().is_err());
    }
}
