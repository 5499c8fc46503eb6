//! Region-homed rooms: each region's group homes the rooms created in it, and replicas of
//! different regions work together through their gateways (the replicas' edge-facing APIs).
//!
//! - [`directory`]: which other region homes which room, as this replica knows it.
//! - [`watchers`]: the other regions' streams that follow this replica's group.
//! - [`follow`]: this replica's streams following the other regions' groups.
//! - [`merge`]: a name created in two regions at once ends as one room, the older one.
//! - [`liveness`]: members here whose edges are other regions' get the same grace rules.
//! - [`discovery`]: listings of public rooms gathered from every region's group.
//!
//! A request for a room homed elsewhere (join, leave, read, the server API's kick and close)
//! is one call to a gateway of the home region, which executes it in its own group. A
//! peer's detach, rebind or disconnect is passed to every other region in the background:
//! a region whose rooms do not hold the peer answers without a commit.

pub mod directory;
pub mod discovery;
pub mod follow;
pub mod liveness;
pub mod merge;
pub mod watchers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::leader::Clients;
use super::proto::registry_client::RegistryClient;
use crate::metrics;
use crate::registry::{Region, RoomId};
use crate::replica::Replica;
use crate::transport::ClusterSecret;
use crate::transport::metadata::FROM_REGION;
use directory::Directory;
use follow::Connected;
use watchers::Watcher;

/// How long a request to another region's group may take, every gateway tried included: a
/// join to a room homed in an unreachable region is answered `unavailable` within it.
pub const REGION_CALL_TIMEOUT: Duration = Duration::from_millis(1_500);
/// Tries of a peer's detach, rebind or disconnect passed to another region.
const BROADCAST_ATTEMPTS: usize = 3;

/// A call of the edge-facing API on another replica.
pub type Call<Req, Resp> =
    fn(
        RegistryClient<Channel>,
        Request<Req>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Resp>, Status>> + Send>>;

/// Where a room's requests are executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// In this replica's group.
    Here,
    /// In `region`'s group, through one of its `gateways`.
    Region {
        region: Region,
        gateways: Vec<String>,
    },
}

pub struct Federation {
    replica: Replica,
    pub directory: Arc<Directory>,
    pub suspects: Arc<merge::Suspects>,
    pub connected: Arc<Connected>,
    watch_tx: mpsc::Sender<Watcher>,
    clients: Arc<Clients>,
    secret: ClusterSecret,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// Whether `request` was passed on by a replica of another region.
pub fn from_region<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FROM_REGION)
}

impl Federation {
    pub fn new(
        replica: Replica,
        clients: Arc<Clients>,
        secret: ClusterSecret,
        watch_tx: mpsc::Sender<Watcher>,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self {
            replica,
            directory: Arc::default(),
            suspects: Arc::default(),
            connected: Arc::default(),
            watch_tx,
            clients,
            secret,
            tasks,
            stop,
        }
    }

    /// Where requests for `room` go. A room this group holds is executed here; otherwise the
    /// region the directory names, when this group knows its gateways; otherwise here (the
    /// request creates the room here, or finds nothing).
    pub fn home(&self, room: &RoomId) -> Home {
        if self.replica.created_at_ms(room).is_some() {
            // Even when another region created it first: until the leader has moved it
            // there (see `merge`), its members are here.
            return Home::Here;
        }
        match self.directory.lookup(room) {
            Some((region, _)) => match self.replica.region_gateways(&region) {
                Some(gateways) if !gateways.is_empty() => Home::Region { region, gateways },
                _ => Home::Here,
            },
            None => Home::Here,
        }
    }

    /// Starts a stream that follows this replica's group for a replica of another region.
    pub fn watch(&self, watcher: Watcher) -> Result<(), Status> {
        self.watch_tx
            .try_send(watcher)
            .map_err(|_| Status::unavailable("this replica is shutting down or overloaded"))
    }

    /// Executes `message` in `region`'s group through one of its `gateways` (the next one
    /// when a gateway cannot be reached), within [`REGION_CALL_TIMEOUT`].
    pub async fn call<Req, Resp>(
        &self,
        region: &Region,
        gateways: &[String],
        message: Req,
        op: &'static str,
        call: Call<Req, Resp>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone + Send + 'static,
    {
        self.call_within(region, gateways, message, op, call, REGION_CALL_TIMEOUT)
            .await
    }

    /// As [`Self::call`], within `timeout` instead of [`REGION_CALL_TIMEOUT`].
    pub async fn call_within<Req, Resp>(
        &self,
        region: &Region,
        gateways: &[String],
        message: Req,
        op: &'static str,
        call: Call<Req, Resp>,
        timeout: Duration,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone + Send + 'static,
    {
        let deadline = Instant::now() + timeout;
        let mut failure = Status::unavailable(format!("region {region} has no gateway"));
        for addr in gateways {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let client = match self.clients.get(addr) {
                Ok(c) => c,
                Err(e) => {
                    failure = e.into();
                    continue;
                }
            };
            let request = self.request(message.clone());
            metrics::region_request(op, "sent");
            match tokio::time::timeout(remaining, call(client, request)).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                    failure = status;
                }
                Ok(Err(status)) => return Err(status),
                Err(_) => {
                    failure = Status::unavailable(format!(
                        "region {region} did not answer within {} ms",
                        timeout.as_millis()
                    ));
                }
            }
        }
        metrics::region_request(op, "unavailable");
        Err(Status::unavailable(format!(
            "the room's home region {region} is unreachable: {}",
            failure.message()
        )))
    }

    /// Passes `message` to every other region's group in the background (a peer's detach,
    /// rebind or disconnect: the rooms it is in elsewhere must hear of it).
    pub fn broadcast<Req, Resp>(&self, message: Req, op: &'static str, call: Call<Req, Resp>)
    where
        Req: Clone + Send + Sync + 'static,
        Resp: Send + 'static,
    {
        for (region, gateways) in self.replica.regions() {
            if region.as_str() == self.replica.region() || gateways.is_empty() {
                continue;
            }
            let this = self.clone_parts();
            let message = message.clone();
            let stop = self.stop.clone();
            self.tasks.spawn(async move {
                for attempt in 0..BROADCAST_ATTEMPTS {
                    let addr = &gateways[attempt % gateways.len()];
                    let Ok(client) = this.clients.get(addr) else {
                        continue;
                    };
                    let mut request = Request::new(message.clone());
                    this.secret.attach(&mut request);
                    if let Ok(v) = MetadataValue::try_from(this.region.as_str()) {
                        request.metadata_mut().insert(FROM_REGION, v);
                    }
                    metrics::region_request(op, "sent");
                    let sent = tokio::select! {
                        () = stop.cancelled() => return,
                        r = tokio::time::timeout(REGION_CALL_TIMEOUT, call(client, request)) => r,
                    };
                    if matches!(sent, Ok(Ok(_))) {
                        return;
                    }
                }
                metrics::region_request(op, "unavailable");
                tracing::warn!(%region, op, "could not tell a region about a peer; its edges' resync will");
            });
        }
    }

    fn clone_parts(&self) -> Parts {
        Parts {
            clients: Arc::clone(&self.clients),
            secret: self.secret.clone(),
            region: self.replica.region().to_owned(),
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        self.secret.attach(&mut request);
        if let Ok(v) = MetadataValue::try_from(self.replica.region()) {
            request.metadata_mut().insert(FROM_REGION, v);
        }
        request
    }
}

struct Parts {
    clients: Arc<Clients>,
    secret: ClusterSecret,
    region: String,
}
