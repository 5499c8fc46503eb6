//! Clients of other replicas' edge-facing APIs, cached per address (one HTTP/2 connection
//! each, not a new channel per call). Used to forward writes to the leader.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tonic::transport::Channel;

use super::proto::registry_client::RegistryClient;
use super::status::ServiceError;
use crate::transport::dial;
use crate::transport::tls::{self, MutualTls};

/// How long connecting to another replica may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Default)]
pub struct Clients {
    by_addr: Mutex<HashMap<String, RegistryClient<Channel>>>,
    tls: Option<MutualTls>,
}

impl Clients {
    /// Clients that dial with mutual TLS when `tls` is set.
    pub fn new(tls: Option<MutualTls>) -> Self {
        Self {
            by_addr: Mutex::default(),
            tls,
        }
    }

    /// A client for `addr`; the connection is made lazily and re-made by tonic when lost.
    pub fn get(&self, addr: &str) -> Result<RegistryClient<Channel>, ServiceError> {
        let mut map = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = tls::endpoint_with_liveness(dial::resolve(addr), self.tls.as_ref())
            .map_err(|e| ServiceError::Forward {
                addr: addr.to_owned(),
                status: tonic::Status::unavailable(tls::error_chain(&e)),
            })?
            .connect_timeout(CONNECT_TIMEOUT);
        let client = RegistryClient::new(endpoint.connect_lazy());
        map.insert(addr.to_owned(), client.clone());
        Ok(client)
    }
}
