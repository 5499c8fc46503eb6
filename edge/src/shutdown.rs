//! The edge's one shutdown signal, in stages. The caller of `start` cancels its token; from
//! then on the edge moves forward through the stages below, and every part of it looks at
//! this one signal (sessions see the drain through their own latch, set from the room index,
//! because a session looks at it every time it waits).

use tokio::sync::watch;

/// Where the edge is in its life; stages only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Serving,
    /// Readiness fails, no new sockets; sessions are told `reconnect` and close over the
    /// drain window.
    Draining,
    /// The shutdown grace period is over: whatever still writes to a socket stops now.
    HardStop,
    /// Sessions are gone: background tasks stop.
    Stopped,
}

pub struct Shutdown {
    stage: watch::Sender<Stage>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            stage: watch::Sender::new(Stage::Serving),
        }
    }
}

impl Shutdown {
    /// Moves to `stage` unless the edge is there or further already.
    pub fn advance(&self, stage: Stage) {
        self.stage.send_if_modified(|current| {
            let later = stage > *current;
            if later {
                *current = stage;
            }
            later
        });
    }

    pub fn stage(&self) -> Stage {
        *self.stage.borrow()
    }

    pub fn is_draining(&self) -> bool {
        self.stage() >= Stage::Draining
    }

    /// Resolves once the edge has reached `stage`.
    pub async fn reached(&self, stage: Stage) {
        let mut rx = self.stage.subscribe();
        // The sender lives as long as `self`, so the wait ends only at `stage`.
        let _ = rx.wait_for(|s| *s >= stage).await;
    }

    /// Resolves at the hard stop: a write that still waits gives up.
    pub async fn stopped(&self) {
        self.reached(Stage::HardStop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_only_move_forward() {
        let s = Shutdown::default();
        assert_eq!(s.stage(), Stage::Serving);
        s.advance(Stage::HardStop);
        s.advance(Stage::Draining);
        assert_eq!(s.stage(), Stage::HardStop);
        assert!(s.is_draining());
        // Already reached: resolves at once.
        s.reached(Stage::Draining).await;
        s.stopped().await;
    }
}
