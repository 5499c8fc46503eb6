//! A TCP relay that a test can cut and heal: the network between two regions, on loopback.
//! Cut, it closes every connection it carries and closes each new one at once (the way a
//! dropped route looks to gRPC: connections fail, nothing hangs); healed, it relays again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// One relay to one target address; stops when dropped.
pub struct Cut {
    pub addr: String,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

struct State {
    cut: bool,
    /// Cancelled (and replaced) by a cut: ends the connections made before it.
    generation: CancellationToken,
}

impl Cut {
    /// Listens on a free port of 127.0.0.1 and relays to `target`.
    pub async fn start(target: &str) -> Cut {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State {
            cut: false,
            generation: CancellationToken::new(),
        }));
        let stop = CancellationToken::new();
        let target = target.to_owned();
        let (s, st) = (Arc::clone(&state), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = st.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((inbound, _)) = accepted else { continue };
                let (cut, generation) = {
                    let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                    (s.cut, s.generation.clone())
                };
                if cut {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        () = generation.cancelled() => {}
                        () = st.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                    }
                });
            }
        });
        Cut { addr, state, stop }
    }

    /// Closes every connection and refuses new ones until [`Cut::heal`].
    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.cut = true;
        s.generation.cancel();
        s.generation = CancellationToken::new();
    }

    pub fn heal(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cut = false;
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
