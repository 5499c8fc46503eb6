//! The edge's client of a remote coordinator cluster.
//!
//! One supervisor task keeps a session with one replica: connect (the URLs in turn, with
//! backoff), register this edge (same incarnation on every reconnect, so its peers stay),
//! open the `Link`, ask the membership task to resync, then renew the lease and pass the
//! link's messages on until something fails, and start over. Writes use the current
//! session's client; while there is none the edge is not ready and writes fail fast.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use heliograph_coordinator::CoordinatorError;
use heliograph_coordinator::grpc::convert;
use heliograph_coordinator::grpc::proto::{
    self, EdgeToReplica, RelayedSignal, edge_to_replica, registry_client::RegistryClient,
    replica_to_edge,
};
use heliograph_coordinator::registry::{
    Command, EdgeId, ListingPage, ListingQuery, Outcome, PeerId, Region, Rejection, RoomId,
    RoomView,
};
use heliograph_coordinator::telemetry;
use heliograph_coordinator::transport::ClusterSecret;
use heliograph_coordinator::transport::tls;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::batch::{self, Batcher};
use super::delivery::{self, Arrival, Backlog, Inbound, Outbound};
use super::{RegistryEvent, RelayError, relayed};
use crate::signal::Envelope;

/// How long connecting to a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one unary call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Unary calls in flight on the replica's connection at once; further calls wait their turn
/// (at most `CALL_TIMEOUT`). When every client of a dead edge resumes here at once, each
/// needs its rooms read and its peer rebound: without this bound ten thousand calls were
/// opened as streams on one HTTP/2 connection together, and the connection, its link and
/// every call on it failed together (docs/BENCHMARKS.md, failover at 10,000 clients).
const MAX_CALLS_IN_FLIGHT: usize = 128;
/// Resumed peers rebound in one call (one Raft entry) at most, and such calls in flight.
const REBIND_BATCH: batch::Limits = batch::Limits {
    max_items: 256,
    in_flight: 4,
    queue: 16 * 1024,
};
/// Rooms read in one call at most (a resume's, and a resync's: every room this edge
/// tracks), and such calls in flight.
const ROOMS_BATCH: batch::Limits = batch::Limits {
    max_items: 512,
    in_flight: 4,
    queue: 16 * 1024,
};
/// How long registering or renewing the lease may hold up a session. A replica that cannot
/// commit (the registry has no quorum) still relays signals and room events: the session
/// goes on without the write, which is retried at the next renewal.
const REGISTRY_WRITE_WAIT: Duration = Duration::from_millis(1_000);
/// How long the replica may take to accept the link; a replica that does not is skipped.
const LINK_OPEN_WAIT: Duration = Duration::from_millis(2_000);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Signals queued towards the replica before new ones are refused.
const LINK_OUT_BUFFER: usize = 4 * 1024;
/// How many receipt intervals between two checks for signals to send again.
const RESEND_CHECK_EVERY: u32 = 10;
/// Events queued for the membership task; the link waits when it is full (backpressure
/// reaches the replica, which drops the link if the edge stays behind).
pub const EVENTS_BUFFER: usize = 4 * 1024;

#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub urls: Vec<String>,
    pub secret: ClusterSecret,
    pub edge: EdgeId,
    pub region: Region,
    /// This edge's public address, recorded in the registry.
    pub address: String,
    pub incarnation: u64,
    pub lease_ms: u64,
    /// Sessions are kept in the region's Redis: peers of a previous run may resume.
    pub resumable_sessions: bool,
}

pub struct RemoteRegistry {
    settings: RemoteSettings,
    client: RwLock<Option<RegistryClient<Channel>>>,
    link: RwLock<Option<mpsc::Sender<EdgeToReplica>>>,
    /// Signals sent to other edges and not yet acknowledged by them (see `delivery`).
    outbound: Mutex<Outbound>,
    /// Signals from other edges: delivered in order, once.
    inbound: Mutex<Inbound>,
    ready: AtomicBool,
    /// Places for unary calls in flight (see [`MAX_CALLS_IN_FLIGHT`]).
    calls: Semaphore,
    /// Rebinds of resumed peers, sent together (see `batch`).
    rebinds: Batcher<PeerId, Outcome>,
    /// Room reads, sent together.
    rooms: Batcher<RoomId, Option<RoomView>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// Why a session with a replica ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("call failed: {0}")]
    Call(#[from] Status),
    #[error("the registry refused this edge: {0}")]
    Refused(Rejection),
    #[error("the link ended")]
    LinkEnded,
    #[error("the membership task is gone")]
    EventsClosed,
}

impl RemoteRegistry {
    /// Starts the supervisor; events go to `events`.
    pub fn start(settings: RemoteSettings, events: mpsc::Sender<RegistryEvent>) -> Arc<Self> {
        let (rebinds, rebind_queue) = batch::batcher(REBIND_BATCH);
        let (rooms, room_queue) = batch::batcher(ROOMS_BATCH);
        let this = Arc::new(Self {
            client: RwLock::new(None),
            link: RwLock::new(None),
            outbound: Mutex::new(Outbound::new(
                settings.edge.to_string(),
                settings.incarnation,
            )),
            inbound: Mutex::new(Inbound::default()),
            settings,
            ready: AtomicBool::new(false),
            calls: Semaphore::new(MAX_CALLS_IN_FLIGHT),
            rebinds,
            rooms,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        this.tasks.spawn(supervise(Arc::clone(&this), events));
        let me = Arc::clone(&this);
        this.tasks.spawn(
            rebind_queue.run(this.stop.clone(), this.tasks.clone(), move |peers| {
                let me = Arc::clone(&me);
                async move { me.rebind_many(peers).await }
            }),
        );
        let me = Arc::clone(&this);
        this.tasks.spawn(
            room_queue.run(this.stop.clone(), this.tasks.clone(), move |rooms| {
                let me = Arc::clone(&me);
                async move { me.get_rooms(rooms).await }
            }),
        );
        this
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.ready.store(false, Ordering::SeqCst);
    }

    fn client(&self) -> Result<RegistryClient<Channel>, CoordinatorError> {
        self.client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| CoordinatorError::Unavailable("no coordinator reachable".into()))
    }

    /// The current session's client and a place for one unary call on it, held until the
    /// call is answered. Fails fast without a session, and after `CALL_TIMEOUT` in the queue.
    async fn call_slot(
        &self,
    ) -> Result<(RegistryClient<Channel>, SemaphorePermit<'_>), CoordinatorError> {
        let client = self.client()?;
        let permit = tokio::time::timeout(CALL_TIMEOUT, self.calls.acquire())
            .await
            .map_err(|_| CoordinatorError::Unavailable("too many registry calls queued".into()))?
            .map_err(|_| CoordinatorError::Unavailable("the registry client is closed".into()))?;
        Ok((client, permit))
    }

    /// A unary call: its deadline, the cluster secret, and the trace context of the span it
    /// is made in (a join's), so that the replica's and the leader's spans join its trace.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.set_timeout(CALL_TIMEOUT);
        self.settings.secret.attach(&mut r);
        if telemetry::enabled() {
            telemetry::inject(&tracing::Span::current(), r.metadata_mut());
        }
        r
    }

    /// Sends a signal towards a peer on another edge. It is numbered and kept until the
    /// target edge acknowledges it: without a link (the edge is moving to another replica)
    /// or with a full one, it goes on the next link or at the next check, so that a replica
    /// lost costs a delay, not a signal. Refused only when too many signals for its target
    /// edge are unacknowledged.
    pub fn relay(
        &self,
        signal: Envelope,
        traceparent: String,
        to_region: &str,
    ) -> Result<(), RelayError> {
        let mut outbound = self.outbound.lock().unwrap_or_else(PoisonError::into_inner);
        let mut proto = relayed::to_proto(signal, traceparent);
        proto.to_region = to_region.to_owned();
        let signal = outbound
            .send(proto, Instant::now())
            .map_err(|Backlog| RelayError::Full)?;
        if let Some(tx) = self
            .link
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            // A full or closed link: the copy kept is sent again later.
            let _ = tx.try_send(signal_msg(signal));
        }
        Ok(())
    }

    pub async fn views(
        &self,
        rooms: &[RoomId],
    ) -> Result<HashMap<RoomId, Option<RoomView>>, CoordinatorError> {
        // Each room joins whatever other sessions read at the same moment (see `batch`).
        let views =
            futures_util::future::join_all(rooms.iter().map(|r| self.rooms.call(r.clone())));
        rooms
            .iter()
            .zip(views.await)
            .map(|(room, view)| view.map(|v| (room.clone(), v)))
            .collect()
    }

    /// One `GetRooms` call; one `GetRoom` per room from a replica of an earlier release.
    async fn get_rooms(
        &self,
        rooms: Vec<RoomId>,
    ) -> Result<Vec<Option<RoomView>>, CoordinatorError> {
        let (mut client, _slot) = self.call_slot().await?;
        let request = proto::GetRoomsRequest {
            rooms: rooms.iter().map(ToString::to_string).collect(),
        };
        let answers = match client.get_rooms(self.request(request)).await {
            Ok(answer) => answer.into_inner().rooms,
            Err(status) if status.code() == Code::Unimplemented => {
                let mut answers = Vec::with_capacity(rooms.len());
                for room in &rooms {
                    let request = proto::GetRoomRequest {
                        room: room.to_string(),
                    };
                    let answer = client.get_room(self.request(request)).await;
                    answers.push(answer.map_err(unavailable)?.into_inner());
                }
                answers
            }
            Err(status) => return Err(unavailable(status)),
        };
        if answers.len() != rooms.len() {
            return Err(CoordinatorError::Unavailable(format!(
                "the replica answered {} rooms for {}",
                answers.len(),
                rooms.len()
            )));
        }
        rooms
            .iter()
            .zip(&answers)
            .map(|(room, answer)| {
                convert::room_view_from_proto(room, answer)
                    .map_err(|e| CoordinatorError::Unavailable(e.to_string()))
            })
            .collect()
    }

    /// One `RebindMany` call for peers resumed on this edge; one `Rebind` per peer from a
    /// replica of an earlier release.
    async fn rebind_many(&self, peers: Vec<PeerId>) -> Result<Vec<Outcome>, CoordinatorError> {
        let (mut client, _slot) = self.call_slot().await?;
        let edge_id = self.settings.edge.to_string();
        let request = proto::RebindManyRequest {
            peer_ids: peers.iter().map(ToString::to_string).collect(),
            edge_id: edge_id.clone(),
            // Filled in by the replica, which knows this edge's region.
            edge_region: String::new(),
        };
        let rejected = match client.rebind_many(self.request(request)).await {
            Ok(answer) => answer.into_inner().rejected,
            Err(status) if status.code() == Code::Unimplemented => {
                let mut rejected = Vec::with_capacity(peers.len());
                for peer in &peers {
                    let request = proto::RebindRequest {
                        peer_id: peer.to_string(),
                        edge_id: edge_id.clone(),
                        edge_region: String::new(),
                    };
                    let answer = client.rebind(self.request(request)).await;
                    rejected.push(answer.map_err(unavailable)?.into_inner().rejected);
                }
                rejected
            }
            Err(status) => return Err(unavailable(status)),
        };
        rejected
            .into_iter()
            .map(|r| {
                Ok(match reject(r)? {
                    Some(r) => Outcome::Rejected(r),
                    None => Outcome::Done,
                })
            })
            .collect()
    }

    /// A page of public rooms from this edge's replica (which asks the other regions), and
    /// the regions missing from it; the call gives up after `within`.
    pub async fn public_rooms(
        &self,
        query: &ListingQuery,
        within: Duration,
    ) -> Result<(ListingPage, Vec<Region>), CoordinatorError> {
        let (mut c, _slot) = self.call_slot().await?;
        let mut request = self.request(convert::listing_query_to_proto(query));
        request.set_timeout(within);
        let answer = c
            .discover_rooms(request)
            .await
            .map_err(unavailable)?
            .into_inner();
        convert::listing_page_from_proto(&answer)
            .map_err(|e| CoordinatorError::Unavailable(e.to_string()))
    }

    /// Runs one registry command as the matching RPC.
    pub async fn execute(&self, command: Command) -> Result<Outcome, CoordinatorError> {
        if let Command::Rebind { peer, edge, .. } = &command
            && *edge == self.settings.edge
        {
            // Peers resume together: their rebinds go together (see `batch`).
            return self.rebinds.call(peer.clone()).await;
        }
        let (mut c, _slot) = self.call_slot().await?;
        let done = |rejected: i32| -> Result<Outcome, CoordinatorError> {
            Ok(match reject(rejected)? {
                Some(r) => Outcome::Rejected(r),
                None => Outcome::Done,
            })
        };
        match command {
            Command::Join {
                room,
                peer,
                edge,
                meta,
                max_members,
                attempt,
                deadline_ms,
                remote_region: _,
                listing,
            } => {
                let r = c
                    .join(self.request(proto::JoinRequest {
                        room: room.to_string(),
                        peer_id: peer.to_string(),
                        edge_id: edge.to_string(),
                        meta_json: meta,
                        max_members: max_members.unwrap_or(0),
                        attempt,
                        deadline_ms,
                        // Filled in by the replica, which knows this edge's region.
                        edge_region: String::new(),
                        public: listing.public,
                        room_meta_json: listing.meta.unwrap_or_default(),
                    }))
                    .await
                    .map_err(unavailable)?
                    .into_inner();
                if let Some(rejection) = reject(r.rejected)? {
                    return Ok(Outcome::Rejected(rejection));
                }
                let members = convert::members_from_proto(&r.members)
                    .map_err(|e| CoordinatorError::Unavailable(e.to_string()))?;
                Ok(Outcome::Joined {
                    epoch: r.epoch,
                    members,
                })
            }
            Command::Leave {
                room,
                peer,
                attempt,
                deadline_ms,
            } => {
                let r = c
                    .leave(self.request(proto::LeaveRequest {
                        room: room.to_string(),
                        peer_id: peer.to_string(),
                        attempt,
                        deadline_ms,
                    }))
                    .await
                    .map_err(unavailable)?
                    .into_inner();
                match reject(r.rejected)? {
                    Some(rejection) => Ok(Outcome::Rejected(rejection)),
                    None => Ok(Outcome::Left { epoch: r.epoch }),
                }
            }
            Command::Disconnect { peer } => done(
                c.disconnect(self.request(proto::DisconnectRequest {
                    peer_id: peer.to_string(),
                }))
                .await
                .map_err(unavailable)?
                .into_inner()
                .rejected,
            ),
            Command::Detach { peer } => done(
                c.detach(self.request(proto::DetachRequest {
                    peer_id: peer.to_string(),
                }))
                .await
                .map_err(unavailable)?
                .into_inner()
                .rejected,
            ),
            Command::Rebind { peer, edge, .. } => done(
                c.rebind(self.request(proto::RebindRequest {
                    peer_id: peer.to_string(),
                    edge_id: edge.to_string(),
                    edge_region: String::new(),
                }))
                .await
                .map_err(unavailable)?
                .into_inner()
                .rejected,
            ),
            Command::ReleaseEdge { edge, incarnation } => done(
                c.release_edge(self.request(proto::ReleaseEdgeRequest {
                    edge_id: edge.to_string(),
                    incarnation,
                }))
                .await
                .map_err(unavailable)?
                .into_inner()
                .rejected,
            ),
            Command::RenewLease {
                edge,
                incarnation,
                lease_ms,
            } => done(
                c.renew_lease(self.request(proto::RenewLeaseRequest {
                    edge_id: edge.to_string(),
                    incarnation,
                    lease_ms,
                }))
                .await
                .map_err(unavailable)?
                .into_inner()
                .rejected,
            ),
            Command::RegisterEdge {
                edge,
                region,
                address,
                incarnation,
                lease_ms,
                resumable_sessions,
                replica,
            } => done(
                c.register_edge(self.request(proto::RegisterEdgeRequest {
                    edge_id: edge.to_string(),
                    region: region.to_string(),
                    address,
                    incarnation,
                    lease_ms,
                    resumable_sessions,
                    replica,
                }))
                .await
                .map_err(unavailable)?
                .into_inner()
                .rejected,
            ),
            Command::Sweep { .. }
            | Command::Remove { .. }
            | Command::Close { .. }
            | Command::ConfigureWebhooks { .. }
            | Command::AckWebhooks { .. }
            | Command::SetRegion { .. }
            | Command::Rehome { .. }
            | Command::RemoteEdges { .. } => Err(CoordinatorError::Unavailable(
                "sweeps, the server API's and the webhooks' commands are the coordinator's, \
                 not an edge's"
                    .into(),
            )),
        }
    }

    fn registration(&self) -> Command {
        let s = &self.settings;
        Command::RegisterEdge {
            edge: s.edge.clone(),
            region: s.region.clone(),
            address: s.address.clone(),
            incarnation: s.incarnation,
            lease_ms: s.lease_ms,
            resumable_sessions: s.resumable_sessions,
            // The serving replica fills in its own id.
            replica: 0,
        }
    }

    /// Registers this edge; a refusal ends the session.
    async fn register(&self) -> Result<(), SessionError> {
        match self.execute(self.registration()).await {
            Ok(Outcome::Done) => Ok(()),
            Ok(Outcome::Rejected(r)) => Err(SessionError::Refused(r)),
            Ok(other) => Err(SessionError::Connect(format!("unexpected {other:?}"))),
            Err(e) => Err(SessionError::Connect(e.to_string())),
        }
    }

    fn clear(&self) {
        self.ready.store(false, Ordering::SeqCst);
        *self.client.write().unwrap_or_else(PoisonError::into_inner) = None;
        *self.link.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// One session with the replica at `url`; returns when it fails (or on stop: `Ok`).
    async fn session(
        &self,
        url: &str,
        events: &mpsc::Sender<RegistryEvent>,
    ) -> Result<(), SessionError> {
        let channel = tls::endpoint_with_liveness(url, self.settings.secret.tls())
            .map_err(|e| SessionError::Connect(tls::error_chain(&e)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| SessionError::Connect(tls::error_chain(&e)))?;
        let mut client = RegistryClient::new(channel);
        *self.client.write().unwrap_or_else(PoisonError::into_inner) = Some(client.clone());
        // The link opens first: signals flow as soon as the replica answers, whether or not
        // the registry can commit this edge's registration right now. It also opens before
        // the resync, so no event falls between the two.
        let (tx, rx) = mpsc::channel(LINK_OUT_BUFFER);
        let hello = EdgeToReplica {
            msg: Some(edge_to_replica::Msg::Hello(proto::LinkHello {
                edge_id: self.settings.edge.to_string(),
                incarnation: self.settings.incarnation,
            })),
        };
        tx.try_send(hello).map_err(|_| SessionError::LinkEnded)?;
        let mut request = Request::new(ReceiverStream::new(rx));
        self.settings.secret.attach(&mut request);
        let mut inbound = tokio::time::timeout(LINK_OPEN_WAIT, client.link(request))
            .await
            .map_err(|_| SessionError::Connect("the replica did not accept the link".into()))??
            .into_inner();
        {
            // What is unacknowledged goes first (under the lock, so before anything new).
            let mut outbound = self.outbound.lock().unwrap_or_else(PoisonError::into_inner);
            for signal in outbound.all(Instant::now()) {
                let _ = tx.try_send(signal_msg(signal));
            }
            *self.link.write().unwrap_or_else(PoisonError::into_inner) = Some(tx.clone());
        }
        events
            .send(RegistryEvent::Resync)
            .await
            .map_err(|_| SessionError::EventsClosed)?;
        let mut registered = self.try_register().await?;
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!(%url, registered, "linked to a coordinator replica");

        let mut renew = tokio::time::interval(Duration::from_millis(self.settings.lease_ms / 3));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        let mut receipts = tokio::time::interval(delivery::RECEIPT_EVERY);
        receipts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return Ok(()),
                _ = receipts.tick() => {
                    ticks = ticks.wrapping_add(1);
                    let check = ticks.is_multiple_of(RESEND_CHECK_EVERY);
                    for signal in self.upkeep(&tx, check) {
                        deliver(events, signal).await?;
                    }
                }
                _ = renew.tick() => {
                    if registered {
                        self.renew().await?;
                    } else if self.try_register().await? {
                        // Registered at last: what happened meanwhile is read again.
                        registered = true;
                        events
                            .send(RegistryEvent::Resync)
                            .await
                            .map_err(|_| SessionError::EventsClosed)?;
                    }
                }
                msg = inbound.message() => {
                    let msg = msg?.ok_or(SessionError::LinkEnded)?;
                    let event = match msg.msg {
                        Some(replica_to_edge::Msg::Event(e)) => match convert::event_from_proto(&e) {
                            Ok((event, view)) => RegistryEvent::Room { event, view },
                            Err(err) => {
                                tracing::warn!(error = %err, "malformed room event; resyncing");
                                RegistryEvent::Resync
                            }
                        },
                        Some(replica_to_edge::Msg::Signal(s)) if delivery::is_receipt(&s) => {
                            self.outbound
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .acknowledge(&s.from_edge, s.acked_incarnation, s.ack_through);
                            continue;
                        }
                        Some(replica_to_edge::Msg::Signal(s)) if s.seq > 0 => {
                            let arrival = self
                                .inbound
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .receive(s, Instant::now());
                            count_arrival(&arrival);
                            for signal in arrival.deliver {
                                deliver(events, signal).await?;
                            }
                            continue;
                        }
                        Some(replica_to_edge::Msg::Signal(s)) => match relayed::from_proto(s) {
                            Some((envelope, traceparent)) => RegistryEvent::Signal { envelope, traceparent },
                            None => RegistryEvent::Undeliverable,
                        },
                        Some(replica_to_edge::Msg::Resync(_)) => RegistryEvent::Resync,
                        None => continue,
                    };
                    events.send(event).await.map_err(|_| SessionError::EventsClosed)?;
                }
            }
        }
    }

    /// Every receipt interval: acknowledges what arrived, and with `check` sends again what
    /// other edges have not acknowledged and stops waiting for gaps that lasted too long.
    /// Returns the signals to deliver.
    fn upkeep(&self, tx: &mpsc::Sender<EdgeToReplica>, check: bool) -> Vec<RelayedSignal> {
        let now = Instant::now();
        let mut deliver = Vec::new();
        {
            let mut inbound = self.inbound.lock().unwrap_or_else(PoisonError::into_inner);
            for (to_edge, incarnation, through) in inbound.receipts() {
                let receipt = delivery::receipt(
                    to_edge,
                    self.settings.edge.to_string(),
                    incarnation,
                    through,
                );
                // A lost receipt is made good by the next one.
                let _ = tx.try_send(signal_msg(receipt));
            }
            if check {
                let arrival = inbound.expire_gaps(now);
                count_arrival(&arrival);
                deliver = arrival.deliver;
            }
        }
        if check {
            let mut outbound = self.outbound.lock().unwrap_or_else(PoisonError::into_inner);
            let due = outbound.check(now, delivery::RETRANSMIT_AFTER);
            metrics::counter!(crate::metrics::RELAY_RESENT).increment(due.resend.len() as u64);
            metrics::counter!(crate::metrics::RELAY_GIVEN_UP).increment(due.given_up as u64);
            metrics::gauge!(crate::metrics::RELAY_UNACKED).set(outbound.unacked() as f64);
            for signal in due.resend {
                let _ = tx.try_send(signal_msg(signal));
            }
        }
        deliver
    }

    /// Registers this edge, unless the registry cannot commit right now (no leader, no
    /// quorum): then the session relays without it (`Ok(false)`) and tries again later. A
    /// refusal ends the session.
    async fn try_register(&self) -> Result<bool, SessionError> {
        match tokio::time::timeout(REGISTRY_WRITE_WAIT, self.register()).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e @ SessionError::Refused(_))) => Err(e),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot register with the registry now; relaying without it");
                Ok(false)
            }
            Err(_) => {
                tracing::warn!("registering timed out; relaying without it");
                Ok(false)
            }
        }
    }

    /// Renews the lease. A registry that cannot commit right now does not end the session:
    /// signals and room events still flow over the link (the replica is alive, or the link
    /// itself fails).
    async fn renew(&self) -> Result<(), SessionError> {
        let s = &self.settings;
        let renewed = tokio::time::timeout(
            REGISTRY_WRITE_WAIT,
            self.execute(Command::RenewLease {
                edge: s.edge.clone(),
                incarnation: s.incarnation,
                lease_ms: s.lease_ms,
            }),
        )
        .await;
        match renewed {
            Ok(Ok(Outcome::Done)) => Ok(()),
            Ok(Ok(Outcome::Rejected(r))) => {
                // The lease ran out (e.g. while the cluster elected a leader): register again.
                tracing::warn!(rejection = %r, "lease renewal refused; registering again");
                self.register().await
            }
            Ok(Ok(other)) => Err(SessionError::Connect(format!("unexpected {other:?}"))),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease renewal failed; the link stays up");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("lease renewal timed out; the link stays up");
                Ok(())
            }
        }
    }
}

/// Keeps a session with some replica until stopped.
async fn supervise(this: Arc<RemoteRegistry>, events: mpsc::Sender<RegistryEvent>) {
    let urls = this.settings.urls.clone();
    let mut next = 0usize;
    let mut backoff = BACKOFF_MIN;
    while !this.stop.is_cancelled() {
        let Some(url) = urls.get(next % urls.len().max(1)) else {
            return;
        };
        let result = this.session(url, &events).await;
        let was_ready = this.is_ready();
        this.clear();
        match result {
            Ok(()) => return,
            Err(SessionError::EventsClosed) => return,
            Err(e) => {
                tracing::warn!(%url, error = %e, "coordinator session ended");
                metrics::counter!(crate::metrics::COORDINATOR_RECONNECTS).increment(1);
            }
        }
        if was_ready {
            // A working session ended, most often because its replica died: retry soon.
            backoff = BACKOFF_MIN;
        }
        // The next attempt goes to another replica: the one that just failed is the least
        // likely to answer, and a failover must not wait for a dead replica's backoff.
        next += 1;
        let jitter = Duration::from_millis(rand::random::<u64>() % 50);
        tokio::select! {
            () = this.stop.cancelled() => return,
            () = tokio::time::sleep(backoff + jitter) => {}
        }
        // Back off only once every replica has been tried, so that one dead replica (or one
        // without a leader yet) does not slow down reaching a healthy one.
        if next.is_multiple_of(urls.len().max(1)) {
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

fn signal_msg(signal: RelayedSignal) -> EdgeToReplica {
    EdgeToReplica {
        msg: Some(edge_to_replica::Msg::Signal(signal)),
    }
}

/// Hands a relayed signal to the membership task.
async fn deliver(
    events: &mpsc::Sender<RegistryEvent>,
    signal: RelayedSignal,
) -> Result<(), SessionError> {
    let event = match relayed::from_proto(signal) {
        Some((envelope, traceparent)) => RegistryEvent::Signal {
            envelope,
            traceparent,
        },
        None => RegistryEvent::Undeliverable,
    };
    events
        .send(event)
        .await
        .map_err(|_| SessionError::EventsClosed)
}

fn count_arrival(arrival: &Arrival) {
    if arrival.duplicate {
        metrics::counter!(crate::metrics::RELAY_DUPLICATES).increment(1);
    }
    metrics::counter!(crate::metrics::RELAY_SKIPPED).increment(arrival.skipped);
}

fn unavailable(status: Status) -> CoordinatorError {
    CoordinatorError::Unavailable(format!("{}: {}", status.code(), status.message()))
}

fn reject(value: i32) -> Result<Option<Rejection>, CoordinatorError> {
    convert::rejection_from_proto(value).map_err(|e| CoordinatorError::Unavailable(e.to_string()))
}
