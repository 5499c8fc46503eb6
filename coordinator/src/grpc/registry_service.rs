//! The edge-facing `Registry` gRPC service of one replica.
//!
//! - Writes become registry [`Command`]s. On a follower they are forwarded to the leader by
//!   this service (once; a forwarded write that meets another follower fails with
//!   `unavailable`), so edges never need to know who leads.
//! - Reads come from this replica's applied state.
//! - `Link` is one stream per edge: room events from [`super::fanout`], signals both ways.
//! - `Relay` takes signals from other replicas for edges linked here.
//!
//! The service checks the cluster secret on every call itself, so it cannot be mounted
//! without it. Background tasks (fan-out, relay streams, link readers) are tracked and stop
//! when the last clone of the service is dropped, or when the shutdown token given to
//! [`RegistryService::new`] is cancelled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::convert::{self, ConvertError};
use super::fanout;
use super::federation::follow::{self, Follow};
use super::federation::watchers::{FEDERATE_BUFFER, FederateItem, Watcher};
use super::federation::{self, Call, Federation, Home};
use super::leader::Clients;
use super::links::{LINK_BUFFER, LinkItem, Links};
use super::proto::registry_server::{Registry, RegistryServer};
use super::proto::{self, edge_to_replica};
use super::relay::{Origin, Relay};
use super::status::ServiceError;
use crate::error::CoordinatorError;
use crate::registry::{
    Command, EdgeId, Listing, Member, Outcome, PeerId, Region, RoomId, RoomView,
};
use crate::replica::Replica;
use crate::telemetry;
use crate::transport::ClusterSecret;
use crate::transport::metadata::FORWARDED;

/// How long a write waits for a new leader during a failover: longer than an election.
const FAILOVER_WAIT: Duration = Duration::from_secs(3);
/// Tries of one write across leader changes.
const WRITE_ATTEMPTS: usize = 4;
/// How long an edge has to send `hello` after opening its link.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The service behind a server of its own, for callers with no shutdown token to share (tests,
/// tools): its tasks stop when the last clone is dropped. `server::serve` builds it
/// with [`RegistryService::new`] and the server's token instead. It checks the cluster secret
/// itself.
pub fn registry_server(replica: Replica, secret: ClusterSecret) -> RegistryServer<RegistryService> {
    RegistryServer::new(RegistryService::new(
        replica,
        secret,
        CancellationToken::new(),
    ))
}

/// Cheap to clone; all clones share the same links and tasks.
#[derive(Clone)]
pub struct RegistryService {
    shared: Arc<Shared>,
}

struct Shared {
    replica: Replica,
    secret: ClusterSecret,
    links: Arc<Links>,
    relay: Arc<Relay>,
    clients: Arc<Clients>,
    federation: Arc<Federation>,
    tasks: TaskTracker,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl RegistryService {
    /// Starts the fan-out task; everything stops when `shutdown` is cancelled or the last
    /// clone is dropped.
    pub fn new(replica: Replica, secret: ClusterSecret, shutdown: CancellationToken) -> Self {
        let stop = shutdown.child_token();
        let tasks = TaskTracker::new();
        let links = Arc::new(Links::default());
        let clients = Arc::new(Clients::new(secret.tls().cloned()));
        let relay = Arc::new(Relay::new(
            replica.clone(),
            Arc::clone(&links),
            Arc::clone(&clients),
            secret.clone(),
            tasks.clone(),
            stop.clone(),
        ));
        let (watch_tx, watch_rx) = mpsc::channel(64);
        tasks.spawn(fanout::run(
            replica.clone(),
            Arc::clone(&links),
            watch_rx,
            stop.clone(),
        ));
        let federation = Arc::new(Federation::new(
            replica.clone(),
            Arc::clone(&clients),
            secret.clone(),
            watch_tx,
            tasks.clone(),
            stop.clone(),
        ));
        tasks.spawn(federation::merge::run(
            Arc::clone(&federation),
            stop.clone(),
        ));
        tasks.spawn(federation::liveness::run(
            Arc::clone(&federation),
            stop.clone(),
        ));
        tasks.spawn(follow::run(
            Follow {
                replica: replica.clone(),
                directory: Arc::clone(&federation.directory),
                links: Arc::clone(&links),
                clients: Arc::clone(&clients),
                secret: secret.clone(),
                connected: Arc::clone(&federation.connected),
                suspects: Arc::clone(&federation.suspects),
            },
            tasks.clone(),
            stop.clone(),
        ));
        Self {
            shared: Arc::new(Shared {
                replica,
                secret,
                links,
                relay,
                clients,
                federation,
                tasks,
                _stop_on_drop: stop.clone().drop_guard(),
                stop,
            }),
        }
    }

    /// Stops the background tasks and waits for them.
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// Executes `command` here, or on the leader through `forward` when this replica does
    /// not lead. When no leader is known, or the known one cannot be reached, the write waits
    /// (up to [`FAILOVER_WAIT`]) for a new leader and is tried again: a failover delays writes
    /// instead of failing them. A retry never applies a change twice, but not every command
    /// answers a repeat as it answered the first try: a repeated join is answered with the room
    /// as it stands, while a repeated leave (the first one committed, its answer was lost) is
    /// refused with `NotInRoom`.
    ///
    /// With tracing on, the write is a span whose parent is the caller's trace context (the
    /// edge's, or the forwarding follower's), and a forwarded write carries this span's.
    async fn write<Req, Resp>(
        &self,
        request: Request<Req>,
        command: Command,
        respond: fn(Outcome) -> Resp,
        forward: Forward<Req, Resp>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone + Send + 'static,
    {
        if !telemetry::enabled() {
            return self
                .execute_or_forward(request, command, respond, forward)
                .await;
        }
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "registry.write",
            command = command.name(),
            forwarded = request.metadata().contains_key(FORWARDED),
            node = self.shared.replica.node_id(),
        );
        telemetry::set_parent(&span, telemetry::extract(request.metadata()));
        self.execute_or_forward(request, command, respond, forward)
            .instrument(span)
            .await
    }

    async fn execute_or_forward<Req, Resp>(
        &self,
        request: Request<Req>,
        command: Command,
        respond: fn(Outcome) -> Resp,
        forward: Forward<Req, Resp>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone + Send + 'static,
    {
        let run = || self.shared.replica.execute(command.clone());
        self.run_or_forward(request, run, respond, forward).await
    }

    /// Runs `run` here (it proposes to this replica's Raft) or, when another replica leads,
    /// forwards the request to it once; waits for an election meanwhile.
    async fn run_or_forward<Req, Resp, T, Run, Fut>(
        &self,
        request: Request<Req>,
        run: Run,
        respond: fn(T) -> Resp,
        forward: Forward<Req, Resp>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone + Send + 'static,
        Run: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, CoordinatorError>>,
    {
        let forwarded = request.metadata().contains_key(FORWARDED);
        let message = request.into_inner();
        let deadline = Instant::now() + FAILOVER_WAIT;
        let mut failure = Status::unavailable("no leader");
        for _ in 0..WRITE_ATTEMPTS {
            let gone_leader = match run().await {
                Ok(outcome) => return Ok(Response::new(respond(outcome))),
                Err(CoordinatorError::NotLeader {
                    leader_api: Some(addr),
                }) if !forwarded => {
                    let tried = self.current_leader();
                    let client = self.shared.clients.get(&addr)?;
                    let mut fwd = Request::new(message.clone());
                    self.shared.secret.attach(&mut fwd);
                    fwd.metadata_mut()
                        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
                    telemetry::inject(&tracing::Span::current(), fwd.metadata_mut());
                    match forward(client, fwd).await {
                        Ok(response) => return Ok(response),
                        // The leader is unreachable or no longer leads.
                        Err(status) if status.code() == tonic::Code::Unavailable => {
                            failure = ServiceError::Forward { addr, status }.into();
                            tried
                        }
                        Err(status) => return Err(ServiceError::Forward { addr, status }.into()),
                    }
                }
                Err(CoordinatorError::NotLeader { .. }) if forwarded => {
                    return Err(ServiceError::LeaderMoved.into());
                }
                Err(e @ CoordinatorError::NotLeader { leader_api: None }) => {
                    failure = ServiceError::from(e).into();
                    None
                }
                Err(e) => return Err(ServiceError::from(e).into()),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let elected = self
                .shared
                .replica
                .raft()
                .wait(Some(remaining))
                .metrics(
                    |m| m.current_leader.is_some() && m.current_leader != gone_leader,
                    "a new leader",
                )
                .await;
            if elected.is_err() {
                break;
            }
        }
        Err(failure)
    }

    /// The server API's kick: `peer` leaves `room` with reason `removed`. Executed here or
    /// forwarded to the leader, exactly like an edge's write.
    pub async fn remove_peer_for_api(
        &self,
        room: &RoomId,
        peer: &PeerId,
    ) -> Result<Outcome, Status> {
        let mut request = Request::new(proto::RemovePeerRequest {
            room: room.to_string(),
            peer_id: peer.to_string(),
        });
        self.shared.secret.attach(&mut request);
        let answer = self.remove_peer(request).await?.into_inner();
        leave_outcome(&answer)
    }

    /// The server API's close: every member leaves `room` with reason `closed`.
    pub async fn close_room_for_api(&self, room: &RoomId) -> Result<Outcome, Status> {
        let mut request = Request::new(proto::CloseRoomRequest {
            room: room.to_string(),
        });
        self.shared.secret.attach(&mut request);
        let answer = self.close_room(request).await?.into_inner();
        leave_outcome(&answer)
    }

    /// `room` as its home group has it: read here when this group homes it, else from a
    /// gateway of its home region (`None`: nobody is in it). With region-homed rooms the
    /// server API answers for a room homed anywhere.
    pub async fn room_anywhere(&self, room: &RoomId) -> Result<Option<RoomView>, Status> {
        let Home::Region { region, gateways } = self.shared.federation.home(room) else {
            return Ok(self.shared.replica.room(room));
        };
        let call: Forward<proto::GetRoomRequest, proto::GetRoomResponse> =
            |mut c, r| Box::pin(async move { c.get_room(r).await });
        let request = proto::GetRoomRequest {
            room: room.to_string(),
        };
        let answer = self
            .shared
            .federation
            .call(&region, &gateways, request, "get_room", call)
            .await?
            .into_inner();
        if !answer.found {
            return Ok(None);
        }
        let members = convert::members_from_proto(&answer.members).map_err(invalid)?;
        Ok(Some(RoomView {
            room: room.clone(),
            epoch: answer.epoch,
            members,
        }))
    }

    /// Sends `frame` (a complete server frame) to each of `targets` in `room` the way a
    /// signal from an edge travels: down the target edge's link when it is attached here,
    /// else to the replica it is attached to (one hop, across regions too). Best effort, like
    /// a signal: a target whose edge is unreachable right now does not get it.
    pub fn relay_frame(&self, room: &RoomId, targets: &[Member], frame: &str) {
        let sent_at_us = crate::clock::now_ms().saturating_mul(1_000);
        for m in targets {
            let signal = proto::RelayedSignal {
                to_edge: m.edge.to_string(),
                to_peer: m.peer.to_string(),
                room: room.to_string(),
                frame: frame.as_bytes().to_vec(),
                sent_at_us,
                from_region: self.shared.replica.region().to_owned(),
                // An edge of another region's group is reached through that region.
                to_region: m.region.to_string(),
                // Unnumbered: a server message is not on an edge-to-edge channel.
                ..proto::RelayedSignal::default()
            };
            self.shared.relay.route(signal, Origin::Edge);
        }
    }

    /// The region of an edge named in a request (`edge_region`) when the edge belongs to
    /// another region's group: it is not registered in this one (in a group whose voters span
    /// regions every edge is, whatever its region).
    fn remote_region(&self, edge: &EdgeId, edge_region: &str) -> Result<Option<Region>, Status> {
        if edge_region.is_empty()
            || edge_region == self.shared.replica.region()
            || self.shared.replica.edge(edge).is_some()
        {
            return Ok(None);
        }
        convert::region("edge_region", edge_region)
            .map(Some)
            .map_err(invalid)
    }

    /// Whether another region's group rebound the peer of `single`. A peer whose rooms are
    /// all homed in other regions is unknown to this group: its edge asked here, and must not
    /// take this group's `UnknownPeer` for a session that expired. Asked of every other
    /// region at once (each answers `UnknownPeer` without a commit when it does not know the
    /// peer either), within the region call timeout.
    async fn rebound_elsewhere(&self, single: proto::RebindRequest) -> bool {
        let call: Forward<proto::RebindRequest, proto::RebindResponse> =
            |mut c, r| Box::pin(async move { c.rebind(r).await });
        let here = self.shared.replica.region().to_owned();
        let asks = self
            .shared
            .replica
            .regions()
            .into_iter()
            .filter(|(region, gateways)| region.as_str() != here && !gateways.is_empty())
            .map(|(region, gateways)| {
                let single = single.clone();
                async move {
                    self.shared
                        .federation
                        .call(&region, &gateways, single, "rebind", call)
                        .await
                        .is_ok_and(|r| r.get_ref().rejected == proto::Rejection::None as i32)
                }
            });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .any(|rebound| rebound)
    }

    /// Passes `request` to the group of the region that homes `room` and returns its answer
    /// (`Ok`); gives the request back (`Err`) when this group executes it.
    async fn to_home<Req, Resp>(
        &self,
        request: Request<Req>,
        room: &RoomId,
        op: &'static str,
        call: Forward<Req, Resp>,
    ) -> Result<Result<Response<Resp>, Status>, Request<Req>>
    where
        Req: Clone + Send + 'static,
    {
        match self.home(&request, room) {
            Home::Region { region, gateways } => Ok(self
                .shared
                .federation
                .call(&region, &gateways, request.into_inner(), op, call)
                .await),
            Home::Here => Err(request),
        }
    }

    /// Where requests for `room` go; a request passed on by another region is executed here.
    fn home<T>(&self, request: &Request<T>, room: &RoomId) -> Home {
        if federation::from_region(request) {
            return Home::Here;
        }
        self.shared.federation.home(room)
    }

    /// The federation's view, for the admin `status`.
    pub fn regions_status(&self) -> Vec<(Region, Vec<String>, bool, u64)> {
        let f = &self.shared.federation;
        self.shared
            .replica
            .regions()
            .into_iter()
            .map(|(region, gateways)| {
                let connected = f.connected.is_connected(&region);
                let rooms = f.directory.rooms_of(&region);
                (region, gateways, connected, rooms)
            })
            .collect()
    }

    fn current_leader(&self) -> Option<u64> {
        self.shared.replica.raft().metrics().borrow().current_leader
    }

    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.shared.secret.check(request)
    }
}

type Forward<Req, Resp> = Call<Req, Resp>;

/// Items in one `GetRooms` or `RebindMany` call at most (a bounded Raft entry and answer).
pub const MAX_BATCH: usize = 1024;

fn invalid(e: ConvertError) -> Status {
    ServiceError::InvalidArgument(e).into()
}

fn rejected(outcome: &Outcome) -> i32 {
    let r = match outcome {
        Outcome::Rejected(r) => Some(*r),
        _ => None,
    };
    convert::rejection_to_proto(r) as i32
}

fn leave_outcome(answer: &proto::LeaveResponse) -> Result<Outcome, Status> {
    match convert::rejection_from_proto(answer.rejected) {
        Ok(Some(r)) => Ok(Outcome::Rejected(r)),
        Ok(None) => Ok(Outcome::Left {
            epoch: answer.epoch,
        }),
        Err(e) => Err(Status::internal(e.to_string())),
    }
}

fn leave_response(outcome: Outcome) -> proto::LeaveResponse {
    match outcome {
        Outcome::Left { epoch } => proto::LeaveResponse { rejected: 0, epoch },
        other => proto::LeaveResponse {
            rejected: rejected(&other),
            epoch: 0,
        },
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register_edge(
        &self,
        request: Request<proto::RegisterEdgeRequest>,
    ) -> Result<Response<proto::RegisterEdgeResponse>, Status> {
        self.check(&request)?;
        let mut request = request;
        let r = request.get_mut();
        if r.replica == 0 {
            // The edge is attached to (linked with) this replica.
            r.replica = self.shared.replica.node_id();
            // Cross-region signals leave through the edge's replica: one in another region
            // would add an inter-region hop to every signal of the edge's own region.
            if r.region != self.shared.replica.region() {
                tracing::warn!(
                    edge = %r.edge_id,
                    edge_region = %r.region,
                    replica_region = %self.shared.replica.region(),
                    "an edge attached to a replica of another region; point its --coordinator \
                     at its own region's replicas"
                );
            }
        }
        let command = Command::RegisterEdge {
            edge: convert::edge("edge_id", &r.edge_id).map_err(invalid)?,
            region: convert::region("region", &r.region).map_err(invalid)?,
            address: r.address.clone(),
            incarnation: r.incarnation,
            lease_ms: r.lease_ms,
            resumable_sessions: r.resumable_sessions,
            replica: r.replica,
        };
        self.write(
            request,
            command,
            |o| proto::RegisterEdgeResponse {
                rejected: rejected(&o),
            },
            |mut c, r| Box::pin(async move { c.register_edge(r).await }),
        )
        .await
    }

    async fn renew_lease(
        &self,
        request: Request<proto::RenewLeaseRequest>,
    ) -> Result<Response<proto::RenewLeaseResponse>, Status> {
        self.check(&request)?;
        let r = request.get_ref();
        let command = Command::RenewLease {
            edge: convert::edge("edge_id", &r.edge_id).map_err(invalid)?,
            incarnation: r.incarnation,
            lease_ms: r.lease_ms,
        };
        self.write(
            request,
            command,
            |o| proto::RenewLeaseResponse {
                rejected: rejected(&o),
            },
            |mut c, r| Box::pin(async move { c.renew_lease(r).await }),
        )
        .await
    }

    async fn release_edge(
        &self,
        request: Request<proto::ReleaseEdgeRequest>,
    ) -> Result<Response<proto::ReleaseEdgeResponse>, Status> {
        self.check(&request)?;
        let r = request.get_ref();
        let command = Command::ReleaseEdge {
            edge: convert::edge("edge_id", &r.edge_id).map_err(invalid)?,
            incarnation: r.incarnation,
        };
        self.write(
            request,
            command,
            |o| proto::ReleaseEdgeResponse {
                rejected: rejected(&o),
            },
            |mut c, r| Box::pin(async move { c.release_edge(r).await }),
        )
        .await
    }

    async fn join(
        &self,
        request: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinResponse>, Status> {
        self.check(&request)?;
        let mut request = request;
        let room = convert::room("room", &request.get_ref().room).map_err(invalid)?;
        let edge = convert::edge("edge_id", &request.get_ref().edge_id).map_err(invalid)?;
        if request.get_ref().edge_region.is_empty() {
            // The edge is attached here, so it is of this replica's region.
            request.get_mut().edge_region = self.shared.replica.edge(&edge).map_or_else(
                || self.shared.replica.region().to_owned(),
                |e| e.region.to_string(),
            );
        }
        let call: Forward<proto::JoinRequest, proto::JoinResponse> =
            |mut c, r| Box::pin(async move { c.join(r).await });
        let request = match self.to_home(request, &room, "join", call).await {
            Ok(answer) => return answer,
            Err(here) => here,
        };
        let r = request.get_ref();
        let remote_region = self.remote_region(&edge, &r.edge_region)?;
        let command = Command::Join {
            room,
            peer: convert::peer("peer_id", &r.peer_id).map_err(invalid)?,
            edge,
            meta: r.meta_json.clone(),
            max_members: (r.max_members > 0).then_some(r.max_members),
            attempt: r.attempt,
            deadline_ms: r.deadline_ms,
            remote_region,
            listing: Listing {
                public: r.public,
                meta: (!r.room_meta_json.is_empty()).then(|| r.room_meta_json.clone()),
            },
        };
        let home = self.shared.replica.region().to_owned();
        self.write(
            request,
            command,
            |o| match o {
                Outcome::Joined { epoch, members } => proto::JoinResponse {
                    rejected: 0,
                    epoch,
                    members: members.iter().map(convert::member_to_proto).collect(),
                    home: String::new(),
                },
                other => proto::JoinResponse {
                    rejected: rejected(&other),
                    ..Default::default()
                },
            },
            |mut c, r| Box::pin(async move { c.join(r).await }),
        )
        .await
        .map(|mut response| {
            if response.get_ref().rejected == 0 {
                response.get_mut().home = home;
            }
            response
        })
    }

    async fn leave(
        &self,
        request: Request<proto::LeaveRequest>,
    ) -> Result<Response<proto::LeaveResponse>, Status> {
        self.check(&request)?;
        let room = convert::room("room", &request.get_ref().room).map_err(invalid)?;
        let call: Forward<proto::LeaveRequest, proto::LeaveResponse> =
            |mut c, r| Box::pin(async move { c.leave(r).await });
        let request = match self.to_home(request, &room, "leave", call).await {
            Ok(answer) => return answer,
            Err(here) => here,
        };
        let r = request.get_ref();
        let command = Command::Leave {
            room,
            peer: convert::peer("peer_id", &r.peer_id).map_err(invalid)?,
            attempt: r.attempt,
            deadline_ms: r.deadline_ms,
        };
        self.write(request, command, leave_response, |mut c, r| {
            Box::pin(async move { c.leave(r).await })
        })
        .await
    }

    async fn remove_peer(
        &self,
        request: Request<proto::RemovePeerRequest>,
    ) -> Result<Response<proto::LeaveResponse>, Status> {
        self.check(&request)?;
        let room = convert::room("room", &request.get_ref().room).map_err(invalid)?;
        let call: Forward<proto::RemovePeerRequest, proto::LeaveResponse> =
            |mut c, r| Box::pin(async move { c.remove_peer(r).await });
        let request = match self.to_home(request, &room, "remove", call).await {
            Ok(answer) => return answer,
            Err(here) => here,
        };
        let r = request.get_ref();
        let command = Command::Remove {
            room,
            peer: convert::peer("peer_id", &r.peer_id).map_err(invalid)?,
        };
        self.write(request, command, leave_response, |mut c, r| {
            Box::pin(async move { c.remove_peer(r).await })
        })
        .await
    }

    async fn close_room(
        &self,
        request: Request<proto::CloseRoomRequest>,
    ) -> Result<Response<proto::LeaveResponse>, Status> {
        self.check(&request)?;
        let room = convert::room("room", &request.get_ref().room).map_err(invalid)?;
        let call: Forward<proto::CloseRoomRequest, proto::LeaveResponse> =
            |mut c, r| Box::pin(async move { c.close_room(r).await });
        let request = match self.to_home(request, &room, "close", call).await {
            Ok(answer) => return answer,
            Err(here) => here,
        };
        let command = Command::Close { room };
        self.write(request, command, leave_response, |mut c, r| {
            Box::pin(async move { c.close_room(r).await })
        })
        .await
    }

    async fn disconnect(
        &self,
        request: Request<proto::DisconnectRequest>,
    ) -> Result<Response<proto::DisconnectResponse>, Status> {
        self.check(&request)?;
        let r = request.get_ref();
        let peer = convert::peer("peer_id", &r.peer_id).map_err(invalid)?;
        if federation::from_region(&request) && !self.shared.replica.knows_peer(&peer) {
            // None of this group's rooms holds the peer: nothing to commit.
            return Ok(Response::new(proto::DisconnectResponse { rejected: 0 }));
        }
        if !federation::from_region(&request) {
            let call: Forward<proto::DisconnectRequest, proto::DisconnectResponse> =
                |mut c, r| Box::pin(async move { c.disconnect(r).await });
            self.shared
                .federation
                .broadcast(r.clone(), "disconnect", call);
        }
        let command = Command::Disconnect { peer };
        self.write(
            request,
            command,
            |o| proto::DisconnectResponse {
                rejected: rejected(&o),
            },
            |mut c, r| Box::pin(async move { c.disconnect(r).await }),
        )
        .await
    }

    async fn detach(
        &self,
        request: Request<proto::DetachRequest>,
    ) -> Result<Response<proto::DetachResponse>, Status> {
        self.check(&request)?;
        let r = request.get_ref();
        let peer = convert::peer("peer_id", &r.peer_id).map_err(invalid)?;
        if federation::from_region(&request) && !self.shared.replica.knows_peer(&peer) {
            return Ok(Response::new(proto::DetachResponse { rejected: 0 }));
        }
        if !federation::from_region(&request) {
            let call: Forward<proto::DetachRequest, proto::DetachResponse> =
                |mut c, r| Box::pin(async move { c.detach(r).await });
            self.shared.federation.broadcast(r.clone(), "detach", call);
        }
        let command = Command::Detach { peer };
        self.write(
            request,
            command,
            |o| proto::DetachResponse {
                rejected: rejected(&o),
            },
            |mut c, r| Box::pin(async move { c.detach(r).await }),
        )
        .await
    }

    async fn rebind_many(
        &self,
        request: Request<proto::RebindManyRequest>,
    ) -> Result<Response<proto::RebindManyResponse>, Status> {
        self.check(&request)?;
        let mut request = request;
        if request.get_ref().peer_ids.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BATCH} peers per call"
            )));
        }
        let peers = request
            .get_ref()
            .peer_ids
            .iter()
            .map(|p| convert::peer("peer_ids", p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let edge = convert::edge("edge_id", &request.get_ref().edge_id).map_err(invalid)?;
        if !federation::from_region(&request) {
            request.get_mut().edge_region = self.shared.replica.region().to_owned();
            // The rooms other regions' groups home may list these peers: each hears of
            // each rebind as of a single one.
            let call: Forward<proto::RebindRequest, proto::RebindResponse> =
                |mut c, r| Box::pin(async move { c.rebind(r).await });
            for peer in &peers {
                let single = proto::RebindRequest {
                    peer_id: peer.to_string(),
                    edge_id: edge.to_string(),
                    edge_region: request.get_ref().edge_region.clone(),
                };
                self.shared.federation.broadcast(single, "rebind", call);
            }
        }
        let remote_region = self.remote_region(&edge, &request.get_ref().edge_region)?;
        let from_edge =
            !federation::from_region(&request) && !request.metadata().contains_key(FORWARDED);
        let edge_region = request.get_ref().edge_region.clone();
        // Each peer its own `Rebind` entry, all proposed at once: the log appends and
        // replicates them together, and the log's format is that of every release.
        let commands: Vec<Command> = peers
            .into_iter()
            .map(|peer| Command::Rebind {
                peer,
                edge: edge.clone(),
                remote_region: remote_region.clone(),
            })
            .collect();
        let run = || async {
            let outcomes = futures_util::future::join_all(
                commands
                    .iter()
                    .map(|c| self.shared.replica.execute(c.clone())),
            )
            .await;
            // Any one refused here (this replica lost the lead) sends the whole call on:
            // a rebind repeated is the same rebind.
            outcomes.into_iter().collect::<Result<Vec<Outcome>, _>>()
        };
        let mut answer = self
            .run_or_forward(
                request,
                run,
                |outcomes| proto::RebindManyResponse {
                    rejected: outcomes.iter().map(rejected).collect(),
                },
                |mut c, r| Box::pin(async move { c.rebind_many(r).await }),
            )
            .await?;
        if from_edge {
            let unknown = proto::Rejection::UnknownPeer as i32;
            let elsewhere = answer
                .get_ref()
                .rejected
                .iter()
                .zip(&commands)
                .enumerate()
                .filter(|(_, (r, _))| **r == unknown)
                .filter_map(|(i, (_, c))| match c {
                    Command::Rebind { peer, edge, .. } => Some((i, peer, edge)),
                    _ => None,
                })
                .map(|(i, peer, edge)| {
                    let single = proto::RebindRequest {
                        peer_id: peer.to_string(),
                        edge_id: edge.to_string(),
                        edge_region: edge_region.clone(),
                    };
                    async move { (i, self.rebound_elsewhere(single).await) }
                });
            for (i, rebound) in futures_util::future::join_all(elsewhere).await {
                if rebound {
                    answer.get_mut().rejected[i] = proto::Rejection::None as i32;
                }
            }
        }
        Ok(answer)
    }

    async fn rebind(
        &self,
        request: Request<proto::RebindRequest>,
    ) -> Result<Response<proto::RebindResponse>, Status> {
        self.check(&request)?;
        let mut request = request;
        let peer = convert::peer("peer_id", &request.get_ref().peer_id).map_err(invalid)?;
        let edge = convert::edge("edge_id", &request.get_ref().edge_id).map_err(invalid)?;
        if federation::from_region(&request) {
            if !self.shared.replica.knows_peer(&peer) {
                return Ok(Response::new(proto::RebindResponse {
                    rejected: convert::rejection_to_proto(Some(
                        crate::registry::Rejection::UnknownPeer,
                    )) as i32,
                }));
            }
        } else {
            request.get_mut().edge_region = self.shared.replica.region().to_owned();
            let call: Forward<proto::RebindRequest, proto::RebindResponse> =
                |mut c, r| Box::pin(async move { c.rebind(r).await });
            self.shared
                .federation
                .broadcast(request.get_ref().clone(), "rebind", call);
        }
        let remote_region = self.remote_region(&edge, &request.get_ref().edge_region)?;
        let from_edge =
            !federation::from_region(&request) && !request.metadata().contains_key(FORWARDED);
        let single = request.get_ref().clone();
        let command = Command::Rebind {
            peer,
            edge,
            remote_region,
        };
        let mut answer = self
            .write(
                request,
                command,
                |o| proto::RebindResponse {
                    rejected: rejected(&o),
                },
                |mut c, r| Box::pin(async move { c.rebind(r).await }),
            )
            .await?;
        if from_edge
            && answer.get_ref().rejected == proto::Rejection::UnknownPeer as i32
            && self.rebound_elsewhere(single).await
        {
            answer.get_mut().rejected = proto::Rejection::None as i32;
        }
        Ok(answer)
    }

    async fn get_rooms(
        &self,
        request: Request<proto::GetRoomsRequest>,
    ) -> Result<Response<proto::GetRoomsResponse>, Status> {
        self.check(&request)?;
        let names = &request.get_ref().rooms;
        if names.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BATCH} rooms per call"
            )));
        }
        let rooms = names
            .iter()
            .map(|r| convert::room("rooms", r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        // The applied epoch first: every view read after it is at least that recent.
        let applied = self.shared.replica.applied_epoch();
        let answers = futures_util::future::join_all(rooms.iter().map(|room| async {
            match self.home(&request, room) {
                Home::Here => Ok(convert::room_view_to_proto(
                    self.shared.replica.room(room),
                    applied,
                )),
                Home::Region { region, gateways } => {
                    let call: Forward<proto::GetRoomRequest, proto::GetRoomResponse> =
                        |mut c, r| Box::pin(async move { c.get_room(r).await });
                    let message = proto::GetRoomRequest {
                        room: room.to_string(),
                    };
                    self.shared
                        .federation
                        .call(&region, &gateways, message, "get_room", call)
                        .await
                        .map(Response::into_inner)
                }
            }
        }))
        .await;
        Ok(Response::new(proto::GetRoomsResponse {
            rooms: answers.into_iter().collect::<Result<_, _>>()?,
        }))
    }

    async fn get_room(
        &self,
        request: Request<proto::GetRoomRequest>,
    ) -> Result<Response<proto::GetRoomResponse>, Status> {
        self.check(&request)?;
        let room = convert::room("room", &request.get_ref().room).map_err(invalid)?;
        let call: Forward<proto::GetRoomRequest, proto::GetRoomResponse> =
            |mut c, r| Box::pin(async move { c.get_room(r).await });
        if let Ok(answer) = self.to_home(request, &room, "get_room", call).await {
            return answer;
        }
        // The applied epoch first: the view read after it is at least that recent.
        let applied = self.shared.replica.applied_epoch();
        Ok(Response::new(convert::room_view_to_proto(
            self.shared.replica.room(&room),
            applied,
        )))
    }

    async fn list_rooms(
        &self,
        request: Request<proto::ListRoomsRequest>,
    ) -> Result<Response<proto::ListRoomsResponse>, Status> {
        self.check(&request)?;
        let rooms = self.shared.replica.rooms();
        Ok(Response::new(proto::ListRoomsResponse {
            rooms: rooms.iter().map(convert::summary_to_proto).collect(),
        }))
    }

    async fn discover_rooms(
        &self,
        request: Request<proto::DiscoverRoomsRequest>,
    ) -> Result<Response<proto::DiscoverRoomsResponse>, Status> {
        self.check(&request)?;
        let query = convert::listing_query_from_proto(request.get_ref()).map_err(invalid)?;
        let here_only = federation::from_region(&request);
        let found = self.shared.federation.discover(&query, here_only).await;
        Ok(Response::new(convert::listing_page_to_proto(
            &found.page,
            found.unreachable.iter().map(ToString::to_string).collect(),
        )))
    }

    type LinkStream = ReceiverStream<LinkItem>;

    async fn link(
        &self,
        request: Request<Streaming<proto::EdgeToReplica>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        self.check(&request)?;
        let mut incoming = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, incoming.message())
            .await
            .map_err(|_| Status::from(ServiceError::NoHello))??;
        let Some(proto::EdgeToReplica {
            msg: Some(edge_to_replica::Msg::Hello(hello)),
        }) = first
        else {
            return Err(ServiceError::NoHello.into());
        };
        let edge = convert::edge("hello.edge_id", &hello.edge_id).map_err(invalid)?;
        let (tx, rx) = mpsc::channel(LINK_BUFFER);
        let registered = self.shared.links.register(edge.clone(), tx);
        tracing::info!(%edge, incarnation = hello.incarnation, "edge linked");
        let links = Arc::clone(&self.shared.links);
        let relay = Arc::clone(&self.shared.relay);
        let stop = self.shared.stop.clone();
        self.shared.tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => break,
                    () = registered.closed.cancelled() => break,
                    m = incoming.message() => m,
                };
                match next {
                    Ok(Some(proto::EdgeToReplica {
                        msg: Some(edge_to_replica::Msg::Signal(signal)),
                    })) => relay.route(signal, Origin::Edge),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            links.unregister(&edge, registered.id);
            tracing::info!(%edge, "edge unlinked");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn edge_states(
        &self,
        request: Request<proto::EdgeStatesRequest>,
    ) -> Result<Response<proto::EdgeStatesResponse>, Status> {
        self.check(&request)?;
        let now = crate::clock::now_ms();
        let states = request
            .into_inner()
            .edge_ids
            .into_iter()
            .map(|id| {
                let record = crate::registry::EdgeId::new(id.clone())
                    .ok()
                    .and_then(|e| self.shared.replica.edge(&e));
                proto::EdgeState {
                    edge_id: id,
                    known: record.is_some(),
                    alive: record.is_some_and(|r| !r.down && r.lease_until_ms > now),
                }
            })
            .collect();
        Ok(Response::new(proto::EdgeStatesResponse { states }))
    }

    type FederateStream = ReceiverStream<FederateItem>;

    async fn federate(
        &self,
        request: Request<proto::FederateRequest>,
    ) -> Result<Response<Self::FederateStream>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        let region = convert::region("region", &r.region).map_err(invalid)?;
        let (tx, rx) = mpsc::channel(FEDERATE_BUFFER);
        self.shared.federation.watch(Watcher { region, tx })?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn relay(
        &self,
        request: Request<Streaming<proto::RelayedSignal>>,
    ) -> Result<Response<proto::RelayAck>, Status> {
        self.check(&request)?;
        let mut incoming = request.into_inner();
        let mut received = 0u64;
        loop {
            let next = tokio::select! {
                () = self.shared.stop.cancelled() => break,
                m = incoming.message() => m?,
            };
            let Some(signal) = next else { break };
            received += 1;
            self.shared.relay.route(signal, Origin::Replica);
        }
        Ok(Response::new(proto::RelayAck { received }))
    }
}
