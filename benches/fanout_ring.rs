//! SPSC ring hand-off between two threads pinned to two cores (design §7:
//! ≥ 50M items/s). Three shapes:
//! - `u64/single`: one `push` / `pop` per item (the worst case);
//! - `u64/batch256`: slices of up to 256 items per ring operation (4096-slot
//!   ring), and `u64/batch1024_ring64k` with the shard ring's real capacity;
//! - `shard_msg/single`: the real payload, `ShardMsg::Push` clones of one
//!   encoded push (reference-count increments included), as control feeds
//!   shards; `shard_msg/batch256`: `ShardMsg::Pushes` of 256 pushes (Kafka
//!   ingest's shape), the consumer cloning each push as the shard does.
//!
//! And `fanout_wake/sleeping_shard`: the latency of one push to a consumer
//! that sleeps like a shard (sleeping flag set, blocked in `io_uring_enter`
//! with a read armed on its eventfd) until it has popped the push.
//!
//! Run: `cargo bench --bench fanout_ring`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use corecast::fanout::{channel, ChannelSizes, Push, PushBatch, PushTarget, ShardMsg};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Items moved per measured iteration.
const ITEMS: u64 = 1 << 20;
const RING: usize = 4096;
const BATCH: usize = 256;

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it and
    // sched_setaffinity only reads it. Failure (CPU not allowed) is reported.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            panic!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The first two CPUs this process may run on, read once before any thread
/// is pinned (pinning narrows what later queries see).
fn cpus() -> (usize, usize) {
    static CPUS: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it and
        // CPU_ISSET only reads it.
        let allowed: Vec<usize> = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                panic!("sched_getaffinity: {}", std::io::Error::last_os_error());
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        };
        assert!(
            allowed.len() >= 2,
            "the ring bench needs two cores, may use {allowed:?}"
        );
        (allowed[0], allowed[1])
    })
}

/// Moves `ITEMS * iters` u64s from this thread (pinned to one core) to a
/// consumer pinned to another; returns the time the producer took.
fn u64_single(iters: u64) -> Duration {
    let (p_cpu, c_cpu) = cpus();
    let total = ITEMS * iters;
    let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(RING);
    let consumer = std::thread::spawn(move || {
        pin_to(c_cpu);
        let mut expect = 0u64;
        while expect < total {
            if let Ok(v) = rx.pop() {
                debug_assert_eq!(v, expect);
                expect += 1;
            } else {
                std::hint::spin_loop();
            }
        }
        black_box(expect)
    });
    pin_to(p_cpu);
    let start = Instant::now();
    let mut i = 0u64;
    while i < total {
        if tx.push(i).is_ok() {
            i += 1;
        } else {
            std::hint::spin_loop();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn u64_batched(iters: u64) -> Duration {
    u64_batched_with(iters, RING, BATCH)
}

/// The control → shard ring's default capacity (`fanout::ChannelSizes`),
/// with 1024-item slices.
fn u64_batched_big(iters: u64) -> Duration {
    u64_batched_with(iters, 65536, 1024)
}

fn u64_batched_with(iters: u64, ring: usize, batch: usize) -> Duration {
    let (p_cpu, c_cpu) = cpus();
    let total = ITEMS * iters;
    let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(ring);
    let consumer = std::thread::spawn(move || {
        pin_to(c_cpu);
        let mut buf = vec![0u64; batch];
        let mut got = 0u64;
        let mut sum = 0u64;
        while got < total {
            let (popped, _) = rx.pop_partial_slice(&mut buf);
            if popped.is_empty() {
                std::hint::spin_loop();
                continue;
            }
            sum = sum.wrapping_add(popped[popped.len() - 1]);
            got += popped.len() as u64;
        }
        black_box(sum)
    });
    pin_to(p_cpu);
    let start = Instant::now();
    let mut buf = vec![0u64; batch];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(batch as u64) as usize;
        for (k, slot) in buf[..n].iter_mut().enumerate() {
            *slot = sent + k as u64;
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (pushed, left) = tx.push_partial_slice(rest);
            if pushed.is_empty() {
                std::hint::spin_loop();
            }
            rest = left;
        }
        sent += n as u64;
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn shard_msgs(iters: u64) -> Duration {
    let push = Push::new(PushTarget::Room("live://1000".into()), 1000, &[7u8; 64]);
    shard_msg_handoff(
        ITEMS * iters,
        move || ShardMsg::Push(push.clone()),
        |m| match m {
            ShardMsg::Push(p) => p.packet.len(),
            _ => unreachable!(),
        },
    )
}

/// Pushes per `ShardMsg::Pushes` in `shard_msg/batch256`.
const PUSH_BATCH: usize = 256;

fn shard_msg_batches(iters: u64) -> Duration {
    let push = Push::new(PushTarget::Room("live://1000".into()), 1000, &[7u8; 64]);
    shard_msg_handoff(
        ITEMS * iters / PUSH_BATCH as u64,
        move || ShardMsg::Pushes(PushBatch::from_pushes(vec![push.clone(); PUSH_BATCH])),
        // The shard hands each push of a batch on as an owned clone.
        |m| match m {
            ShardMsg::Pushes(b) => b.iter().map(|p| black_box(p.clone()).packet.len()).sum(),
            _ => unreachable!(),
        },
    )
}

/// `total` messages made by `make` on one core, popped and dropped after
/// `consume` on the other, both spinning on a full or empty ring.
fn shard_msg_handoff(
    total: u64,
    make: impl Fn() -> ShardMsg,
    consume: fn(ShardMsg) -> usize,
) -> Duration {
    let (p_cpu, c_cpu) = cpus();
    let (mut tx, mut rx) = rtrb::RingBuffer::<ShardMsg>::new(RING);
    let consumer = std::thread::spawn(move || {
        pin_to(c_cpu);
        let mut got = 0u64;
        let mut bytes = 0usize;
        while got < total {
            match rx.pop() {
                Ok(m) => {
                    bytes += consume(m);
                    got += 1;
                }
                Err(_) => std::hint::spin_loop(),
            }
        }
        black_box(bytes)
    });
    pin_to(p_cpu);
    let start = Instant::now();
    let mut i = 0u64;
    let mut pending = None;
    while i < total {
        let msg = pending.take().unwrap_or_else(&make);
        match tx.push(msg) {
            Ok(()) => i += 1,
            Err(rtrb::PushError::Full(m)) => {
                pending = Some(m);
                std::hint::spin_loop();
            }
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

/// Sum of `iters` push → pop latencies to a consumer asleep in io_uring.
fn wake_latency(iters: u64) -> Duration {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let (p_cpu, c_cpu) = cpus();
    let (mut link, mut inbox) = channel(0, ChannelSizes::default()).unwrap();
    let waker = link.waker().clone();
    // Latency of the last push seen, in ns + 1 (0 = none yet).
    let seen = Arc::new(AtomicU64::new(0));
    let seen_c = seen.clone();
    let consumer = std::thread::spawn(move || {
        pin_to(c_cpu);
        let mut ring = io_uring::IoUring::new(8).unwrap();
        let mut buf = [0u8; 8];
        let fd = io_uring::types::Fd(inbox.eventfd());
        let arm = |ring: &mut io_uring::IoUring, buf: &mut [u8; 8]| {
            let e = io_uring::opcode::Read::new(fd, buf.as_mut_ptr(), 8).build();
            // SAFETY: `buf` outlives the request (it is read only after the
            // completion, and the loop never ends with a read in flight
            // except at exit, when the ring is dropped before `buf`).
            unsafe { ring.submission().push(&e).unwrap() };
        };
        arm(&mut ring, &mut buf);
        let mut done = 0u64;
        while done < iters {
            while let Some(m) = inbox.try_recv() {
                if let ShardMsg::Push(p) = m {
                    let sent = u64::from_le_bytes(p.packet[16..24].try_into().unwrap());
                    let now = origin_ns();
                    seen_c.store(now.saturating_sub(sent) + 1, Ordering::Release);
                    done += 1;
                }
            }
            if done >= iters {
                break;
            }
            if inbox.prepare_to_sleep() {
                ring.submit_and_wait(1).unwrap();
                inbox.awake();
            }
            if ring.completion().next().is_some() {
                arm(&mut ring, &mut buf);
            }
        }
        drop(ring);
    });
    pin_to(p_cpu);
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        // Wait until the consumer is asleep, then push.
        let t = Instant::now();
        while !waker.is_sleeping() {
            std::hint::spin_loop();
            if t.elapsed() > Duration::from_secs(5) {
                panic!("consumer never went to sleep");
            }
        }
        std::thread::sleep(Duration::from_micros(50));
        let sent = origin_ns();
        let p = Push::new(PushTarget::All, 1000, &sent.to_le_bytes());
        seen.store(0, Ordering::Release);
        if link.try_send(ShardMsg::Push(p)).is_err() {
            panic!("ring full");
        }
        let ns = loop {
            let v = seen.load(Ordering::Acquire);
            if v != 0 {
                break v - 1;
            }
            std::hint::spin_loop();
        };
        total += Duration::from_nanos(ns);
    }
    consumer.join().unwrap();
    total
}

fn origin_ns() -> u64 {
    static O: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    O.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn wake(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_wake");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("sleeping_shard", |b| b.iter_custom(wake_latency));
    g.finish();
}

fn ring_handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_ring");
    g.throughput(Throughput::Elements(ITEMS));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("u64/single", |b| b.iter_custom(u64_single));
    g.bench_function("u64/batch256", |b| b.iter_custom(u64_batched));
    g.bench_function("u64/batch1024_ring64k", |b| b.iter_custom(u64_batched_big));
    g.bench_function("shard_msg/single", |b| b.iter_custom(shard_msgs));
    g.bench_function("shard_msg/batch256", |b| b.iter_custom(shard_msg_batches));
    g.finish();
}

criterion_group!(benches, ring_handoff, wake);
criterion_main!(benches);
