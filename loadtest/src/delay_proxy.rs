//! A userspace TCP proxy that holds every byte for a fixed one-way delay in each direction:
//! the network between two simulated regions, without root or netem.
//!
//! Each direction of a connection is a reader and a writer joined by a bounded queue of
//! timestamped chunks; the writer sends a chunk when its delay has passed. A full queue
//! stops the reader (TCP backpressure), so memory stays bounded.
//!
//! The writer waits on a `timerfd` (nanosecond resolution), not on tokio's timer: tokio rounds
//! every sleep up to its next millisecond tick, which made each crossing of a link up to 1 ms
//! longer than its stated delay (1.3 ms on average with the wake-up), and that error entered
//! every cross-region figure twice per round trip.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Chunks in flight per direction before the reader waits.
const QUEUE_CHUNKS: usize = 1024;
const CHUNK_BYTES: usize = 16 * 1024;

/// Cuts a proxy's link (a partition) and heals it: cut, every connection through it is
/// closed and new ones are closed at once, as a dropped route looks to the processes.
#[derive(Clone, Default)]
pub struct Switch {
    inner: Arc<Mutex<SwitchState>>,
}

#[derive(Default)]
struct SwitchState {
    cut: bool,
    /// Cancelled (and replaced) by a cut: ends the connections made before it.
    generation: CancellationToken,
}

impl Switch {
    pub fn cut(&self) {
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        s.cut = true;
        s.generation.cancel();
        s.generation = CancellationToken::new();
    }

    pub fn heal(&self) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cut = false;
    }

    /// `None` while cut; else the token that a later cut cancels.
    fn admit(&self) -> Option<CancellationToken> {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (!s.cut).then(|| s.generation.clone())
    }
}

/// One proxy: accepts on `listener`, connects each client to `to`, delays both ways.
pub async fn run(
    listener: TcpListener,
    to: SocketAddr,
    delay: Duration,
    stop: CancellationToken,
) -> Result<()> {
    run_switched(listener, to, delay, Switch::default(), stop).await
}

/// [`run`], cut and healed by `switch`.
pub async fn run_switched(
    listener: TcpListener,
    to: SocketAddr,
    delay: Duration,
    switch: Switch,
    stop: CancellationToken,
) -> Result<()> {
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (inbound, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or similar: keep serving the connections already open.
                eprintln!("delay-proxy: accept failed: {e}");
                continue;
            }
        };
        let Some(generation) = switch.admit() else {
            drop(inbound);
            continue;
        };
        let stop = stop.clone();
        tasks.spawn(async move {
            let cut = generation.clone();
            let connected = async {
                if let Err(e) = connection(inbound, to, delay, stop).await {
                    eprintln!("delay-proxy: connection to {to} ended: {e:#}");
                }
            };
            tokio::select! {
                () = cut.cancelled() => {}
                () = connected => {}
            }
        });
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn connection(
    inbound: TcpStream,
    to: SocketAddr,
    delay: Duration,
    stop: CancellationToken,
) -> Result<()> {
    let outbound = TcpStream::connect(to)
        .await
        .with_context(|| format!("connecting to {to}"))?;
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    let (in_r, in_w) = inbound.into_split();
    let (out_r, out_w) = outbound.into_split();
    let both = async { tokio::join!(direction(in_r, out_w, delay), direction(out_r, in_w, delay)) };
    tokio::select! {
        () = stop.cancelled() => {}
        _ = both => {}
    }
    Ok(())
}

/// Copies `from` to `to`, each chunk `delay` after it was read; ends at EOF or an error.
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut timer = match tokio_timerfd::Delay::new(Instant::now()) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("delay-proxy: no timerfd ({e}); delaying with tokio's timer");
                None
            }
        };
        while let Some((due, chunk)) = rx.recv().await {
            wait_until(&mut timer, due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Waits until `due`, on the timerfd when there is one.
async fn wait_until(timer: &mut Option<tokio_timerfd::Delay>, due: Instant) {
    if let Some(t) = timer {
        t.reset(due);
        if t.await.is_ok() {
            return;
        }
    }
    tokio::time::sleep_until(due.into()).await;
}

/// `delay-proxy --listen A --to B --delay-ms D` until interrupted.
pub async fn serve(listen: SocketAddr, to: SocketAddr, delay_ms: u64) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!(
        "{}",
        serde_json::json!({"listening": listener.local_addr()?.to_string(), "to": to.to_string(), "delay_ms": delay_ms})
    );
    let stop = CancellationToken::new();
    let proxy = tokio::spawn(run(
        listener,
        to,
        Duration::from_millis(delay_ms),
        stop.clone(),
    ));
    tokio::signal::ctrl_c().await?;
    stop.cancel();
    proxy.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn bytes_arrive_after_the_delay_both_ways() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let proxy = tokio::spawn(run(
            listener,
            echo_addr,
            Duration::from_millis(30),
            stop.clone(),
        ));
        let mut c = TcpStream::connect(addr).await.unwrap();
        let start = std::time::Instant::now();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        let rtt = start.elapsed();
        assert_eq!(&buf, b"hello");
        assert!(rtt >= Duration::from_millis(60), "{rtt:?}");
        assert!(rtt < Duration::from_millis(500), "{rtt:?}");
        stop.cancel();
        proxy.await.unwrap().unwrap();
    }
}
