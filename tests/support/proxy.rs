//! A TCP proxy a test puts in a link: it can delay each direction by a fixed time (every chunk
//! is held that long, order kept, no throttling), pause forwarding altogether (bytes wait,
//! the connections stay up: what a network black hole looks like to TCP), and reset every
//! connection it carries (what a NAT or load balancer dropping its state looks like).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

pub struct Proxy {
    pub addr: SocketAddr,
    paused: Arc<AtomicBool>,
    resets: watch::Sender<u64>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // without blocking: a test may drop it on an async thread
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Proxy {
    /// Forwards 127.0.0.1:<free port> to `upstream`; `up` delays client → upstream bytes,
    /// `down` delays upstream → client bytes.
    pub fn start(upstream: SocketAddr, up: Duration, down: Duration) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let paused = Arc::new(AtomicBool::new(false));
        // bound here (std), served on the proxy's own runtime: no block_on, so a test may
        // start it from async code
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let p = paused.clone();
        let (resets, reset_rx) = watch::channel(0u64);
        rt.spawn(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                pump(cr, sw, up, p.clone(), reset_rx.clone());
                pump(sr, cw, down, p.clone(), reset_rx.clone());
            }
        });
        Proxy { addr, paused, resets, rt: Some(rt) }
    }

    /// Stops (true) or resumes (false) forwarding in both directions.
    pub fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::SeqCst);
    }

    /// Closes every connection it carries now (new ones are carried as before).
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    paused: Arc<AtomicBool>,
    mut resets: watch::Receiver<u64>,
) {
    resets.mark_unchanged();
    let mut writer_resets = resets.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read = tokio::select! {
                r = from.read(&mut buf) => r,
                // reset: both halves close (the writer's queue is dropped unsent)
                _ = resets.changed() => return,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                b = rx.recv() => b,
                // reset: what is queued is lost, as it would be in a dropped connection
                _ = writer_resets.changed() => return,
            };
            let Some((due, bytes)) = next else { break };
            let held = async {
                tokio::time::sleep_until(due).await;
                while paused.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::select! {
                _ = held => {}
                _ = writer_resets.changed() => return,
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
}
