//! The bare floor for fan-in: what any tester must pay on this machine to offer the same load,
//! with nothing of squall in it. Blocking sockets and plain threads: one thread sends every
//! client's PUBLISH at its intended time (`clock_nanosleep` to an absolute deadline, one
//! `send` per message, as each client owns its socket), one thread reads the subscriber's
//! socket eagerly (a blocking `recv` into 64 KiB, counting PUBLISH frames). No latency is
//! recorded, no ledger kept, no timeouts or keepalives: everything squall does on top of this
//! is its own cost.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What the floor measured.
pub struct Floor {
    pub sent: u64,
    pub received: u64,
    /// Process CPU while the load ran, s (the idle runtime's share is nil).
    pub tester_cpu_s: f64,
    pub broker_cpu_s: f64,
    /// Send lag (actual − intended), µs.
    pub lag_p50_us: u64,
    pub lag_p99_us: u64,
}

fn connect(port: u16, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the broker listens");
    s.set_nodelay(true).unwrap();
    // CONNECT, MQTT 3.1.1, clean session, no keepalive
    let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    var.extend_from_slice(&(id.len() as u16).to_be_bytes());
    var.extend_from_slice(id.as_bytes());
    s.write_all(&frame(0x10, &var)).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    s
}

/// A connected client subscribed to `filter` at QoS 0.
fn subscriber(port: u16, id: &str, filter: &str) -> TcpStream {
    let mut s = connect(port, id);
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(0);
    s.write_all(&frame(0x82, &body)).unwrap();
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).unwrap();
    assert_eq!(suback[0], 0x90, "SUBACK");
    s
}

/// A QoS 0 PUBLISH of `payload` filler bytes on `topic`.
fn publish_frame(topic: &str, payload: u32) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.resize(body.len() + payload as usize, 0x5a);
    frame(0x30, &body)
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Counts the PUBLISH frames in a byte stream that arrives in arbitrary pieces.
#[derive(Default)]
struct Frames {
    carry: Vec<u8>,
    publishes: u64,
}

impl Frames {
    fn feed(&mut self, data: &[u8]) {
        self.carry.extend_from_slice(data);
        let mut at = 0;
        loop {
            let b = &self.carry[at..];
            if b.len() < 2 {
                break;
            }
            let (mut len, mut mul, mut i) = (0usize, 1usize, 1);
            let mut complete = false;
            while i < b.len() && i <= 4 {
                len += (b[i] & 0x7f) as usize * mul;
                mul *= 128;
                i += 1;
                if b[i - 1] & 0x80 == 0 {
                    complete = true;
                    break;
                }
            }
            if !complete || b.len() < i + len {
                break;
            }
            if b[0] >> 4 == 3 {
                self.publishes += 1;
            }
            at += i + len;
        }
        self.carry.drain(..at);
    }
}

/// `clients` publishers × `rate` msg/s each, staggered over the interval, QoS 0, `payload`
/// bytes, on `lag/{i}`, to one subscriber on `lag/#`, for `secs`. Deadlines rounded up onto a
/// `coalesce` grid when it is not zero (several sends per wake).
pub fn fan_in(
    port: u16,
    bpid: u32,
    clients: u32,
    rate: f64,
    secs: u64,
    payload: u32,
    coalesce: Duration,
) -> Floor {
    let mut sub = subscriber(port, "floor-sub", "lag/#");
    let mut pubs: Vec<(TcpStream, Vec<u8>)> = (0..clients)
        .map(|i| (connect(port, &format!("floor-{i}")), publish_frame(&format!("lag/{i}"), payload)))
        .collect();
    let per_client = (rate * secs as f64).round() as u64;
    let expected = per_client * clients as u64;
    sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let reader = std::thread::spawn(move || {
        let mut frames = Frames::default();
        let mut buf = vec![0u8; 64 * 1024];
        while frames.publishes < expected {
            match sub.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => frames.feed(&buf[..n]),
            }
        }
        frames.publishes
    });
    let (c0, b0) = (super::self_cpu_s(), squall_benches::cpu_s(bpid));
    let interval_ns = (1e9 / rate) as u64;
    let t0 = Instant::now() + Duration::from_millis(50);
    let grid = coalesce.as_nanos() as u64;
    let mut lag = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let mut sent = 0u64;
    let mut slept_to = 0u64;
    for k in 0..per_client {
        for (i, (s, packet)) in pubs.iter_mut().enumerate() {
            let intended = k * interval_ns + interval_ns * i as u64 / clients as u64;
            let wake = if grid > 0 { intended.div_ceil(grid) * grid } else { intended };
            if wake > slept_to {
                sleep_until(t0 + Duration::from_nanos(wake));
                slept_to = wake;
            }
            s.write_all(packet).unwrap();
            sent += 1;
            let late = Instant::now().saturating_duration_since(t0 + Duration::from_nanos(intended));
            lag.record(late.as_micros() as u64).unwrap();
        }
    }
    let received = reader.join().unwrap();
    let (tester_cpu_s, broker_cpu_s) = (super::self_cpu_s() - c0, squall_benches::cpu_s(bpid) - b0);
    Floor {
        sent,
        received,
        tester_cpu_s,
        broker_cpu_s,
        lag_p50_us: lag.value_at_quantile(0.5),
        lag_p99_us: lag.value_at_quantile(0.99),
    }
}

/// Sleeps to an absolute `CLOCK_MONOTONIC` time (what `Instant` reads on Linux).
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at <= now {
        return;
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let target = ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128 + (at - now).as_nanos();
    let ts = libc::timespec {
        tv_sec: (target / 1_000_000_000) as libc::time_t,
        tv_nsec: (target % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec; EINTR only shortens the sleep, and the loop's next deadline
    // is absolute
    unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) };
}

/// One publisher writing as fast as the broker takes (64 KiB of PUBLISH frames per `send`,
/// so the writer costs nearly nothing per message), one subscriber reading. `read_gap`: after
/// each read, sleep this long before the next (0: eager, a read as soon as data is there);
/// the wait bounds the arrival error it adds. Runs `secs`, then waits for the broker to drain.
pub fn flood(port: u16, bpid: u32, secs: u64, payload: u32, read_gap: Duration) -> Floor {
    let mut sub = subscriber(port, "flood-sub", "tp");
    let mut publisher = connect(port, "flood-pub");
    let one = publish_frame("tp", payload);
    let per_batch = (64 * 1024 / one.len()).max(1);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * per_batch).collect();
    sub.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let (c0, b0) = (super::self_cpu_s(), squall_benches::cpu_s(bpid));
    let reader = std::thread::spawn(move || {
        let mut frames = Frames::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match sub.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => frames.feed(&buf[..n]),
            }
            if !read_gap.is_zero() {
                sleep_until(Instant::now() + read_gap);
            }
        }
        frames.publishes
    });
    let end = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0u64;
    while Instant::now() < end {
        publisher.write_all(&batch).unwrap();
        sent += per_batch as u64;
    }
    let received = reader.join().unwrap();
    let (tester_cpu_s, broker_cpu_s) = (super::self_cpu_s() - c0, squall_benches::cpu_s(bpid) - b0);
    Floor { sent, received, tester_cpu_s, broker_cpu_s, lag_p50_us: 0, lag_p99_us: 0 }
}
