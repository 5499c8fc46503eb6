//! Address rewrites for dialing other replicas (`serve --dial-via FROM=TO`).
//!
//! A replica dials other replicas at the addresses they advertise in the Raft membership,
//! which every replica shares. A rewrite lets one replica reach a peer another way without
//! changing what the peer advertises: through a NAT or tunnel, or through the per-region-pair
//! delay proxies of the multi-region simulation. Set once at start-up, before any dialing.

use std::collections::HashMap;
use std::sync::OnceLock;

static REWRITES: OnceLock<HashMap<String, String>> = OnceLock::new();

/// Why a rewrite is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    #[error("--dial-via must look like FROM_HOST:PORT=TO_HOST:PORT, got {0:?}")]
    Syntax(String),
    #[error("dial rewrites are already set")]
    AlreadySet,
}

/// Parses `FROM=TO` pairs.
pub fn parse(pairs: &[String]) -> Result<HashMap<String, String>, DialError> {
    pairs
        .iter()
        .map(|p| {
            let (from, to) = p
                .split_once('=')
                .filter(|(f, t)| f.contains(':') && t.contains(':'))
                .ok_or_else(|| DialError::Syntax(p.clone()))?;
            Ok((from.trim().to_owned(), to.trim().to_owned()))
        })
        .collect()
}

/// Installs the process's rewrites; at most once.
pub fn install(rewrites: HashMap<String, String>) -> Result<(), DialError> {
    REWRITES.set(rewrites).map_err(|_| DialError::AlreadySet)
}

/// The address to dial for a peer that advertises `addr`.
pub fn resolve(addr: &str) -> &str {
    REWRITES
        .get()
        .and_then(|m| m.get(addr.trim_start_matches("http://")))
        .map_or(addr, String::as_str)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pairs_parse_and_bad_ones_are_named() {
        let m = parse(&["127.0.2.1:7000=127.0.1.102:17000".into()]).unwrap();
        assert_eq!(m["127.0.2.1:7000"], "127.0.1.102:17000");
        assert!(matches!(parse(&["nope".into()]), Err(DialError::Syntax(_))));
        // Nothing installed in this test process: addresses pass through.
        assert_eq!(resolve("127.0.0.1:1"), "127.0.0.1:1");
    }
}
