//! A userspace link emulator for tests (no tc netem or iptables here): a
//! TCP proxy on 127.0.0.1 between sensor and collector that the test can
//! cut with a reset, turn into a silent blackhole (sockets stay open,
//! nothing is forwarded), throttle to a byte rate, delay, and restore.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Shared {
    blackhole: AtomicBool,
    /// Bytes per second per direction, 0 = unlimited.
    rate: AtomicU64,
    /// One-way delay in milliseconds added to every chunk.
    latency_ms: AtomicU64,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    /// Connections accepted so far.
    pub accepted: AtomicU64,
    /// Bytes forwarded client -> server.
    pub up_bytes: AtomicU64,
    /// When each client -> server chunk was forwarded, and its size.
    up_log: Mutex<Vec<(Instant, u64)>>,
}

pub struct LinkEmu {
    pub port: u16,
    shared: Arc<Shared>,
}

impl LinkEmu {
    /// Listens on a free 127.0.0.1 port and forwards to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> LinkEmu {
        LinkEmu::balance(&[upstream])
    }

    /// As [`LinkEmu::start`], in front of several servers: each connection
    /// goes to the next of `upstreams` in turn that accepts it (a small TCP
    /// balancer, as a Kubernetes Service in front of ingest replicas).
    pub fn balance(upstreams: &[u16]) -> LinkEmu {
        let upstreams = upstreams.to_vec();
        assert!(!upstreams.is_empty());
        let mut next = 0usize;
        let l = TcpListener::bind("127.0.0.1:0").expect("bind link emulator");
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        std::thread::spawn(move || {
            while !sh.stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).ok();
                        let server = (0..upstreams.len()).find_map(|_| {
                            let port = upstreams[next % upstreams.len()];
                            next += 1;
                            TcpStream::connect(("127.0.0.1", port)).ok()
                        });
                        let Some(server) = server else {
                            reset(&client);
                            continue;
                        };
                        sh.accepted.fetch_add(1, Ordering::Relaxed);
                        for s in [&client, &server] {
                            s.set_nodelay(true).ok();
                            s.set_read_timeout(Some(Duration::from_millis(20))).ok();
                        }
                        {
                            let mut c = sh.conns.lock().unwrap();
                            c.push(client.try_clone().unwrap());
                            c.push(server.try_clone().unwrap());
                        }
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let (a, b) = (sh.clone(), sh.clone());
                        std::thread::spawn(move || pump(client, server, a, true));
                        std::thread::spawn(move || pump(s2, c2, b, false));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        LinkEmu { port, shared }
    }

    /// Resets every open connection (RST to both sides).
    pub fn cut_reset(&self) {
        let mut c = self.shared.conns.lock().unwrap();
        for s in c.drain(..) {
            reset(&s);
        }
    }

    /// Silently drops everything (true) or forwards again (false).
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::Relaxed);
    }

    pub fn throttle(&self, bytes_per_sec: u64) {
        self.shared.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    pub fn latency(&self, ms: u64) {
        self.shared.latency_ms.store(ms, Ordering::Relaxed);
    }

    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    pub fn up_bytes(&self) -> u64 {
        self.shared.up_bytes.load(Ordering::Relaxed)
    }

    /// The most bytes forwarded client -> server within any `window`, as
    /// the emulator saw them go by (an observer outside the sensor).
    pub fn max_up_in(&self, window: Duration) -> u64 {
        let log = self.shared.up_log.lock().unwrap();
        let (mut start, mut sum, mut max) = (0, 0, 0);
        for (i, (t, n)) in log.iter().enumerate() {
            sum += n;
            while *t - log[start].0 > window {
                sum -= log[start].1;
                start += 1;
            }
            let _ = i;
            max = max.max(sum);
        }
        max
    }

    /// The span from the first to the last client -> server byte.
    pub fn up_span(&self) -> Duration {
        let log = self.shared.up_log.lock().unwrap();
        match (log.first(), log.last()) {
            (Some(a), Some(b)) => b.0 - a.0,
            _ => Duration::ZERO,
        }
    }
}

impl Drop for LinkEmu {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.cut_reset();
    }
}

/// Closes with RST (SO_LINGER 0), like a middlebox dropping the state.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Both);
}

fn pump(mut from: TcpStream, mut to: TcpStream, sh: Arc<Shared>, up: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut window_start = Instant::now();
    let mut window_bytes = 0u64;
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            return;
        }
        if sh.blackhole.load(Ordering::Relaxed) {
            // Keep the sockets, forward nothing, read nothing.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let rate = sh.rate.load(Ordering::Relaxed);
        let chunk = if rate > 0 {
            (rate as usize / 20).clamp(64, buf.len())
        } else {
            buf.len()
        };
        let n = match from.read(&mut buf[..chunk]) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => {
                reset(&to);
                return;
            }
        };
        let lat = sh.latency_ms.load(Ordering::Relaxed);
        if lat > 0 {
            std::thread::sleep(Duration::from_millis(lat));
        }
        if rate > 0 {
            window_bytes += n as u64;
            let due = Duration::from_secs_f64(window_bytes as f64 / rate as f64);
            let el = window_start.elapsed();
            if due > el {
                std::thread::sleep(due - el);
            }
            if el > Duration::from_secs(5) {
                window_start = Instant::now();
                window_bytes = 0;
            }
        }
        if up {
            sh.up_bytes.fetch_add(n as u64, Ordering::Relaxed);
            sh.up_log.lock().unwrap().push((Instant::now(), n as u64));
        }
        if to.write_all(&buf[..n]).is_err() {
            reset(&from);
            return;
        }
    }
}
