//! Thin io_uring helpers shared by the client engine and the `ceiling` scenario:
//! ring setup with a sparse registered file table, SQ pushing that never fails,
//! waiting with a timeout, and a provided-buffer ring for multishot receives.

use std::io;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// One completion, copied out of the CQ so the ring can be borrowed again.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

/// An io_uring with a sparse registered file table (direct descriptors).
/// Sockets live only in that table, so they never count against `ulimit -n`.
pub struct Uring {
    ring: IoUring,
    completions: Vec<Completion>,
    /// Completions reaped while pushing (the kernel refused to submit until
    /// the CQ drained); handed out first by the next `wait`.
    backlog: Vec<Completion>,
}

impl Uring {
    /// `files` slots in the registered table; the kernel caps it at RLIMIT_NOFILE.
    pub fn new(sq_entries: u32, files: u32) -> io::Result<Self> {
        let cq_entries = (sq_entries * 8).max(4096);
        // SINGLE_ISSUER + DEFER_TASKRUN cut task-work overhead; older kernels lack them.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .setup_cqsize(cq_entries)
            .build(sq_entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(cq_entries)
                    .build(sq_entries)
            })?;
        if files > 0 {
            ring.submitter().register_files_sparse(files)?;
        }
        Ok(Self {
            ring,
            completions: Vec::with_capacity(cq_entries as usize),
            backlog: Vec::new(),
        })
    }

    pub fn submitter(&self) -> io_uring::Submitter<'_> {
        self.ring.submitter()
    }

    /// Queue one SQE, flushing the SQ to the kernel first if it is full.
    pub fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer and sockaddr an entry points to is owned by the
            // caller's long-lived state (connection slab, worker tables, static
            // data) and stays valid until its completion is reaped.
            let pushed = unsafe { self.ring.submission().push(entry).is_ok() };
            if pushed {
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Queue a chain of SQEs atomically (all or none), flushing first if needed.
    pub fn push_chain(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        loop {
            // SAFETY: as in `push`.
            let pushed = unsafe { self.ring.submission().push_multiple(entries).is_ok() };
            if pushed {
                return Ok(());
            }
            self.submit()?;
        }
    }

    pub fn submit(&mut self) -> io::Result<usize> {
        loop {
            match self.ring.submit() {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // CQ overflow backlog: reap, so that a caller looping on
                    // a full SQ makes progress instead of spinning.
                    self.reap_into_backlog();
                    return Ok(0);
                }
                other => return other,
            }
        }
    }

    /// Submit and wait for at least one completion or `timeout`, then copy
    /// every available completion out. Returns the completions.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<&[Completion]> {
        let ts = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.completions.clear();
        self.completions.append(&mut self.backlog);
        for cqe in self.ring.completion() {
            self.completions.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        Ok(&self.completions)
    }

    fn reap_into_backlog(&mut self) {
        for cqe in self.ring.completion() {
            self.backlog.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    /// Completions copied by the last `wait`, for callers that need `&mut self` meanwhile.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// Give back a vector from `take_completions` so its allocation is reused.
    pub fn restore_completions(&mut self, mut v: Vec<Completion>) {
        v.clear();
        self.completions = v;
    }
}

/// True when a multishot request will post more completions.
pub fn more(flags: u32) -> bool {
    cqueue::more(flags)
}

/// A provided-buffer ring: the kernel picks a free buffer for each receive, so
/// an idle connection owns no receive buffer at all.
pub struct BufRing {
    entries_ptr: *mut types::BufRingEntry,
    ring_bytes: usize,
    bufs: Vec<u8>,
    count: u16,
    buf_size: usize,
    tail: u16,
    pending: u16,
    bgid: u16,
}

impl BufRing {
    /// `count` must be a power of two ≤ 32768.
    pub fn new(uring: &Uring, bgid: u16, count: u16, buf_size: usize) -> io::Result<Self> {
        assert!(
            count.is_power_of_two(),
            "buffer count must be a power of two"
        );
        let ring_bytes = count as usize * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: anonymous private mapping; checked for MAP_FAILED below. The
        // kernel requires the ring to be page aligned, which mmap guarantees.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut ring = Self {
            entries_ptr: ptr.cast(),
            ring_bytes,
            bufs: vec![0u8; count as usize * buf_size],
            count,
            buf_size,
            tail: 0,
            pending: 0,
            bgid,
        };
        // SAFETY: the mapping lives as long as `ring`, which unregisters it on drop
        // implicitly when the io_uring closes; the ring owner keeps both together.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ptr as u64, count, bgid, 0)?;
        }
        for bid in 0..count {
            ring.recycle(bid);
        }
        ring.publish();
        Ok(ring)
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Mutable view of the first `len` bytes of buffer `bid` (the kernel is
    /// done with it until it is recycled).
    pub fn data_mut(&mut self, bid: u16, len: usize) -> &mut [u8] {
        let start = bid as usize * self.buf_size;
        &mut self.bufs[start..start + len.min(self.buf_size)]
    }

    /// Hand buffer `bid` back to the kernel (visible after `publish`).
    pub fn recycle(&mut self, bid: u16) {
        let mask = self.count - 1;
        let idx = (self.tail.wrapping_add(self.pending) & mask) as usize;
        // SAFETY: idx < count, inside the mapping; the kernel does not read
        // entries past the published tail, so writing here does not race.
        let entry = unsafe { &mut *self.entries_ptr.add(idx) };
        let addr = self.bufs.as_ptr() as u64 + bid as u64 * self.buf_size as u64;
        entry.set_addr(addr);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.pending += 1;
    }

    /// Make recycled buffers visible to the kernel with one release store.
    pub fn publish(&mut self) {
        if self.pending == 0 {
            return;
        }
        self.tail = self.tail.wrapping_add(self.pending);
        self.pending = 0;
        // SAFETY: the tail field overlays entry 0's `resv`, inside the mapping;
        // the kernel reads it with acquire semantics.
        unsafe {
            let tail =
                types::BufRingEntry::tail(self.entries_ptr) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping the region mapped in `new`; the owning Uring is
        // dropped first (field order in owners) or the buffer group is idle.
        unsafe {
            libc::munmap(self.entries_ptr.cast(), self.ring_bytes);
        }
    }
}

/// IPv4 sockaddr for `ip:port`.
pub fn sockaddr_v4(ip: std::net::Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

pub const SOCKADDR_IN_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as _;

/// Pin the calling thread to one CPU (best effort: logs on failure).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(
                cpu,
                "sched_setaffinity failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Monotonic clock in nanoseconds; comparable across processes on one box,
/// so a push body stamped by one process can be timed by another.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the provided timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of the calling thread in nanoseconds (user + system, softirq
/// work the kernel did while it ran included).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the provided timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Read by the kernel through the SetSockOpt SQE of every connect chain.
static ONE: libc::c_int = 1;

/// A SetSockOpt SQE (for a connect chain, before the connect) setting
/// TCP_DEFER_ACCEPT on a client socket: Linux then holds back the
/// handshake's final ACK (a delayed-ACK timer of up to 200 ms) so that it
/// rides on the first data segment when the client sends at once, one packet
/// less per connection. The server sees the same connection, its accept
/// completing on the ACK + data segment. Only worth it when the first send is
/// linked to the connect.
pub fn defer_ack_opt(slot: u32, user_data: u64) -> squeue::Entry {
    opcode::SetSockOpt::new(
        types::Fixed(slot),
        libc::IPPROTO_TCP as u32,
        libc::TCP_DEFER_ACCEPT as u32,
        (&ONE as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as u32,
    )
    .build()
    .flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS)
    .user_data(user_data)
}

/// A SetSockOpt SQE (for a connect chain, before the connect) setting
/// TCP_FASTOPEN_CONNECT: with a Fast Open cookie cached for the server, the
/// connect completes at once without sending anything and the linked first
/// send leaves inside the SYN (one round trip and two packets less); without
/// a cookie the SYN asks for one and the connection is an ordinary one.
/// Needs bit 1 of `net.ipv4.tcp_fastopen` here and bit 2 on the server.
pub fn fastopen_connect_opt(slot: u32, user_data: u64) -> squeue::Entry {
    opcode::SetSockOpt::new(
        types::Fixed(slot),
        libc::IPPROTO_TCP as u32,
        libc::TCP_FASTOPEN_CONNECT as u32,
        (&ONE as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as u32,
    )
    .build()
    .flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS)
    .user_data(user_data)
}

/// The linked SQEs that open a socket straight into fixed `slot`, set
/// IP_BIND_ADDRESS_NO_PORT (the port is then picked at connect time from the
/// 4-tuple hash, far cheaper than bind's search), bind it to `src` and connect
/// it to `dst`. Only the connect posts a completion on success.
pub fn connect_chain(
    slot: u32,
    src: &libc::sockaddr_in,
    dst: &libc::sockaddr_in,
    chain_ud: u64,
    connect_ud: u64,
) -> [squeue::Entry; 4] {
    let dest = types::DestinationSlot::try_from_slot_target(slot)
        .expect("slot below the auto-alloc marker");
    let link = squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS;
    [
        opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0)
            .file_index(Some(dest))
            .build()
            .flags(link)
            .user_data(chain_ud),
        opcode::SetSockOpt::new(
            types::Fixed(slot),
            libc::IPPROTO_IP as u32,
            libc::IP_BIND_ADDRESS_NO_PORT as u32,
            (&ONE as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
        .build()
        .flags(link)
        .user_data(chain_ud),
        opcode::Bind::new(
            types::Fixed(slot),
            (src as *const libc::sockaddr_in).cast(),
            SOCKADDR_IN_LEN,
        )
        .build()
        .flags(link)
        .user_data(chain_ud),
        opcode::Connect::new(
            types::Fixed(slot),
            (dst as *const libc::sockaddr_in).cast(),
            SOCKADDR_IN_LEN,
        )
        .build()
        .user_data(connect_ud),
    ]
}
