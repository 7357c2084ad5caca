//! TCP Fast Open on the WS/TCP listeners (`listen.tcp_fastopen_qlen`).
//!
//! The queue length is read back from the server's own listening sockets
//! (duplicated with pidfd_getfd), which holds whatever the host's sysctl.
//! The end-to-end test needs `net.ipv4.tcp_fastopen = 3` (client and server
//! bits) and fails, naming the setting, without it.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use corecast_testkit::pipelined::{pipelined_auth, read_101_and_packet};
use corecast_testkit::server::{op, Server};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const BIN: &str = env!("CARGO_BIN_EXE_corecast");

/// `TCP_INFO.tcpi_options` bit: the SYN's data was acknowledged.
const TCPI_OPT_SYN_DATA: u8 = 32;

fn int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes and `len` is v's size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(v)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The TCP_FASTOPEN queue length of every socket of `pid` listening on
/// `port`, taken from copies of its descriptors.
fn fastopen_queues(pid: u32, port: u16) -> Vec<libc::c_int> {
    // SAFETY: plain syscall; the returned descriptor is checked and owned.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as RawFd;
    assert!(
        pidfd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/<pid>/fd") {
        let entry = entry.expect("fd entry");
        let is_socket = std::fs::read_link(entry.path())
            .map(|t| t.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        let Ok(target_fd) = entry.file_name().to_string_lossy().parse::<libc::c_int>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: plain syscall on an owned pidfd; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) }
            as RawFd;
        if fd < 0 {
            continue; // closed meanwhile
        }
        // SAFETY: a fresh descriptor (a copy) nobody else owns.
        let sock = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let listening = int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) == 1;
        let on_port = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() == port);
        if listening && on_port {
            out.push(
                int_opt(fd, libc::IPPROTO_TCP, libc::TCP_FASTOPEN)
                    .expect("getsockopt TCP_FASTOPEN"),
            );
        }
    }
    out
}

#[test]
fn listeners_carry_the_configured_fastopen_queue() {
    let srv = Server::builder(BIN)
        .args(["--shards", "2", "--auth-mode", "insecure"])
        .start()
        .expect("start corecast");
    for addr in [srv.ws, srv.tcp] {
        let q = fastopen_queues(srv.pid(), addr.port());
        assert_eq!(
            q,
            vec![4096, 4096],
            "default queue on both shards' listeners of {addr}"
        );
    }
    drop(srv);

    let srv = Server::builder(BIN)
        .args([
            "--shards",
            "1",
            "--auth-mode",
            "insecure",
            "--tcp-fastopen-qlen",
            "0",
        ])
        .start()
        .expect("start corecast");
    assert_eq!(
        fastopen_queues(srv.pid(), srv.ws.port()),
        vec![0],
        "queue 0 = off"
    );
}

/// WS upgrade + op 7 in one write on a TCP_FASTOPEN_CONNECT socket; returns
/// the reply (op, seq, body) and whether the request rode in the SYN.
fn fastopen_auth(ws: SocketAddr, mid: i64) -> ((u32, u32, Vec<u8>), bool) {
    let hs = pipelined_auth(&ws.to_string(), mid, "live://1");

    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN_CONNECT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "TCP_FASTOPEN_CONNECT: {}",
        std::io::Error::last_os_error()
    );
    // With a cookie cached, connect returns at once and the write sends the SYN.
    s.connect(&SockAddr::from(ws)).expect("connect");
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&hs.request).expect("upgrade + op 7");
    let reply = read_101_and_packet(&mut s, &hs.key).expect("the 101 and op 8");
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes.
    let options = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info.tcpi_options
    };
    (reply, options & TCPI_OPT_SYN_DATA != 0)
}

#[test]
fn a_returning_fastopen_client_sends_its_request_in_the_syn() {
    let sysctl = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fastopen")
        .expect("read /proc/sys/net/ipv4/tcp_fastopen");
    let bits: u32 = sysctl.trim().parse().expect("a number");
    assert_eq!(
        bits & 3,
        3,
        "net.ipv4.tcp_fastopen = {bits}: this test needs the client and server bits \
         (sysctl -w net.ipv4.tcp_fastopen=3, see tuning/sysctl-corecast.conf)"
    );
    let srv = Server::builder(BIN)
        .args(["--shards", "1", "--auth-mode", "insecure"])
        .start()
        .expect("start corecast");
    // The first connection may fetch the cookie (an ordinary handshake) or
    // already hold one from an earlier run; the second has one for sure.
    let (reply, _) = fastopen_auth(srv.ws, 1);
    assert_eq!(reply, (op::AUTH_REPLY, 1, Vec::new()), "op 8: auth ok");
    let (reply, in_syn) = fastopen_auth(srv.ws, 2);
    assert_eq!(reply, (op::AUTH_REPLY, 1, Vec::new()), "op 8: auth ok");
    assert!(
        in_syn,
        "the second connection's upgrade + op 7 rode in its SYN"
    );
}
