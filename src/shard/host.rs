//! Host preflight (what `serve` refuses to start without) and the
//! `host-check` report.

use std::fmt::Write as _;

use crate::config::Config;

/// A host limit that prevents serving, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("io_uring is unavailable ({0}): set sysctl kernel.io_uring_disabled=0 and allow io_uring_setup in the seccomp profile (see tuning/)")]
    NoIoUring(std::io::Error),
    #[error("{what} is {have}, corecast needs {need}: {fix}")]
    TooLow {
        what: &'static str,
        have: u64,
        need: u64,
        fix: &'static str,
    },
}

fn rlimit(res: libc::__rlimit_resource_t) -> (u64, u64) {
    // SAFETY: getrlimit fills a plain struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(res, &mut r);
        (r.rlim_cur, r.rlim_max)
    }
}

/// Raises the soft nofile limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let (cur, max) = rlimit(libc::RLIMIT_NOFILE);
    if cur < max {
        let r = libc::rlimit {
            rlim_cur: max,
            rlim_max: max,
        };
        // SAFETY: setrlimit reads a plain struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            return max;
        }
    }
    cur
}

/// Checks io_uring (with the features shards use) can be set up.
pub fn check_io_uring() -> Result<(), HostError> {
    let ring = io_uring::IoUring::new(8).map_err(HostError::NoIoUring)?;
    ring.submitter()
        .register_files_sparse(4)
        .map_err(HostError::NoIoUring)?;
    Ok(())
}

/// Bytes of locked memory the shards need (buffer ring entry arrays).
pub fn memlock_needed(cfg: &Config) -> u64 {
    let per_shard = (cfg.recv_buffers_per_shard() as u64 * 16).div_ceil(4096) * 4096;
    per_shard * cfg.shard_count() as u64
}

/// Preflight for `serve`: io_uring works, memlock and nofile suffice for
/// the configured shards. Returns the file-table size per shard.
pub fn preflight(cfg: &Config) -> Result<u32, HostError> {
    check_io_uring()?;
    let (memlock, _) = rlimit(libc::RLIMIT_MEMLOCK);
    let need = memlock_needed(cfg);
    if memlock != libc::RLIM_INFINITY && memlock < need {
        return Err(HostError::TooLow {
            what: "RLIMIT_MEMLOCK",
            have: memlock,
            need,
            fix: "raise LimitMEMLOCK (systemd) / memlock in limits.conf, or use fewer shards / shards.recv_buffers",
        });
    }
    let nofile = raise_nofile();
    let want = cfg.shards.max_conns as u64;
    if want > nofile {
        return Err(HostError::TooLow {
            what: "RLIMIT_NOFILE",
            have: nofile,
            need: want,
            fix:
                "a ring's file table cannot exceed it: raise LimitNOFILE / nofile in limits.conf, \
                  or lower shards.max_conns and add shards",
        });
    }
    if nofile < 64 {
        return Err(HostError::TooLow {
            what: "RLIMIT_NOFILE",
            have: nofile,
            need: 64,
            fix: "raise LimitNOFILE / nofile in limits.conf",
        });
    }
    Ok(if want == 0 {
        nofile.min(1 << 20) as u32
    } else {
        want as u32
    })
}

fn read_sys(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The `host-check` report: every limit that matters, and what to change.
/// Returns the text and whether everything is fine.
pub fn report(cfg: &Config) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let mut line = |good: bool, what: &str, detail: String| {
        ok &= good;
        let _ = writeln!(
            out,
            "[{}] {what}: {detail}",
            if good { " ok " } else { "FAIL" }
        );
    };
    match check_io_uring() {
        Ok(()) => line(true, "io_uring", "available (direct descriptors ok)".into()),
        Err(e) => line(false, "io_uring", e.to_string()),
    }
    let (ml, _) = rlimit(libc::RLIMIT_MEMLOCK);
    let need = memlock_needed(cfg);
    line(
        ml == libc::RLIM_INFINITY || ml >= need,
        "memlock",
        format!(
            "{} (shards need {need} B); raise LimitMEMLOCK / memlock in tuning/limits.conf if short",
            if ml == libc::RLIM_INFINITY { "unlimited".into() } else { format!("{ml} B") }
        ),
    );
    let (nf, nf_max) = rlimit(libc::RLIMIT_NOFILE);
    let shards = cfg.shard_count() as u64;
    line(
        nf_max >= 1024,
        "nofile",
        format!(
            "soft {nf}, hard {nf_max}: each shard ring holds up to {nf_max} connections, \
             {shards} shards hold up to {}; for more raise LimitNOFILE (tuning/) or add shards",
            nf_max.saturating_mul(shards)
        ),
    );
    let somax: u64 = read_sys("/proc/sys/net/core/somaxconn")
        .parse()
        .unwrap_or(0);
    line(
        somax >= cfg.listen.backlog as u64 || somax >= 4096,
        "net.core.somaxconn",
        format!(
            "{somax} (backlog asked {}); sysctl net.core.somaxconn=65535 (tuning/sysctl.conf)",
            cfg.listen.backlog
        ),
    );
    let tfo: u32 = read_sys("/proc/sys/net/ipv4/tcp_fastopen")
        .parse()
        .unwrap_or(0);
    line(
        true,
        "net.ipv4.tcp_fastopen",
        if cfg.listen.tcp_fastopen_qlen == 0 {
            format!("{tfo} (Fast Open off in corecast: listen.tcp_fastopen_qlen = 0)")
        } else if tfo & 2 != 0 {
            format!(
                "{tfo}: Fast Open on (listener queue {})",
                cfg.listen.tcp_fastopen_qlen
            )
        } else {
            format!(
                "{tfo}: no server bit, the listeners' Fast Open queue is inert; \
                 sysctl net.ipv4.tcp_fastopen=3 for clients' requests in their SYN (tuning/sysctl-corecast.conf)"
            )
        },
    );
    let range = read_sys("/proc/sys/net/ipv4/ip_local_port_range");
    line(
        true,
        "net.ipv4.ip_local_port_range",
        format!(
            "{range} (matters for local load generators; widen with sysctl, tuning/sysctl.conf)"
        ),
    );
    let cpus = cfg.shard_cpus();
    let allowed = crate::config::allowed_cpus();
    let bad: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|c| !allowed.contains(c))
        .collect();
    line(
        bad.is_empty(),
        "CPUs",
        format!(
            "shards pinned to {cpus:?}, process may run on {allowed:?}{}",
            if bad.is_empty() {
                String::new()
            } else {
                format!("; not allowed: {bad:?} (fix shards.cpus)")
            }
        ),
    );
    (out, ok)
}
