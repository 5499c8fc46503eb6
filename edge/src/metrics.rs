//! The edge's metrics: names (with units), fixed label sets, and handles resolved once.
//!
//! Handles are taken from whatever recorder is installed when [`EdgeMetrics::new`] runs, so
//! the binary installs its Prometheus recorder first. Labels never carry room or peer ids.

use std::collections::HashMap;

/// Maps from a fixed label set to its handle, looked up per message: a fixed-seed foldhash
/// (the keys are the program's own constants, never input).
type Handles<K> = HashMap<K, Counter, foldhash::fast::FixedState>;
/// The same, for metrics labelled by ingress too.
type IngressHandles<K> = Handles<(Ingress, K)>;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};

use crate::protocol::ErrorCode;

pub const CONNECTIONS_OPEN: &str = "heliograph_edge_connections_open";
pub const SOCKETS_PARKED: &str = "heliograph_edge_sockets_parked";
/// Counted by the runtime's park hook (main.rs), which holds no [`EdgeMetrics`].
pub const ALLOCATOR_COLLECTIONS: &str = "heliograph_edge_allocator_collections_total";
pub const CONNECTIONS_ACCEPTED: &str = "heliograph_edge_connections_accepted_total";
pub const CONNECTIONS_CLOSED: &str = "heliograph_edge_connections_closed_total";
pub const MESSAGES_RECEIVED: &str = "heliograph_edge_messages_received_total";
pub const MESSAGES_SENT: &str = "heliograph_edge_messages_sent_total";
pub const SIGNAL_RELAY_SECONDS: &str = "heliograph_edge_signal_relay_seconds";
pub const ERRORS: &str = "heliograph_edge_errors_total";
pub const JOIN_SECONDS: &str = "heliograph_edge_join_duration_seconds";
pub const ROOMS_TRACKED: &str = "heliograph_edge_rooms_tracked";
pub const REGISTRY_RESYNCS: &str = "heliograph_edge_registry_resyncs_total";
pub const JOINS_GIVEN_UP: &str = "heliograph_edge_joins_given_up_total";
pub const CONNECTIONS_REFUSED: &str = "heliograph_edge_connections_refused_total";
pub const COORDINATOR_RECONNECTS: &str = "heliograph_edge_coordinator_reconnects_total";
pub const RELAY_RESENT: &str = "heliograph_edge_relay_resent_total";
pub const RELAY_GIVEN_UP: &str = "heliograph_edge_relay_given_up_total";
pub const RELAY_DUPLICATES: &str = "heliograph_edge_relay_duplicates_total";
pub const RELAY_SKIPPED: &str = "heliograph_edge_relay_skipped_total";
pub const RELAY_UNACKED: &str = "heliograph_edge_relay_unacked";

/// Why a connection or upgrade request was refused before it became a WebSocket connection.
pub const REFUSAL_REASONS: [&str; 7] = [
    "origin",
    "edge_full",
    "address_limit",
    "draining",
    "proxy_header",
    "proxy_untrusted",
    "handshake_timeout",
];
pub const RELAY_UNDELIVERABLE: &str = "heliograph_edge_relay_undeliverable_total";
pub const ROUTING_DECISIONS: &str = "heliograph_edge_routing_decisions_total";
pub const REDIS_ERRORS: &str = "heliograph_edge_redis_errors_total";
pub const REDIS_UP: &str = "heliograph_edge_redis_up";
pub const RESUMES: &str = "heliograph_edge_resumes_total";
pub const SIGNALS_EXPIRED: &str = "heliograph_edge_signals_expired_total";
pub const SESSIONS_DETACHED: &str = "heliograph_edge_sessions_detached_total";
pub const SIGNALS_REPLAYED: &str = "heliograph_edge_signals_replayed_total";
pub const SIGNALS_PENDING: &str = "heliograph_edge_signals_pending";
pub const DRAIN_NOTICES: &str = "heliograph_edge_drain_notices_total";
pub const CONTACTS_REQUESTS: &str = "heliograph_edge_contacts_requests_total";
pub const CONTACT_WATCHES: &str = "heliograph_edge_contact_watches";
pub const CONTACT_PUBLISHED: &str = "heliograph_edge_contact_published";
pub const INVITES: &str = "heliograph_edge_invites_total";

/// Outcomes of `contacts` requests.
pub const CONTACTS_OUTCOMES: [&str; 4] = ["ok", "too_many", "rate_limited", "unavailable"];
/// Outcomes of `invite` requests (`not_a_contact` whatever the reason the target is not one).
pub const INVITE_OUTCOMES: [&str; 4] = ["sent", "not_a_contact", "rate_limited", "unavailable"];
pub const LIST_ROOMS: &str = "heliograph_edge_list_rooms_total";
pub const LIST_ROOMS_SECONDS: &str = "heliograph_edge_list_rooms_duration_seconds";
/// Outcomes of `list-rooms` requests: answered with every region's rooms, answered without
/// the regions that did not answer in time, refused over the connection's rate, or failed
/// (the registry could not be asked).
pub const LIST_ROOMS_OUTCOMES: [&str; 4] = ["complete", "partial", "rate_limited", "unavailable"];

/// How a client reached the edge: the native WebSocket (`/ws`, `heliograph.v1`) or the
/// Socket.IO endpoint (`/socket.io/`, see `socketio`). A label of the connection and message
/// metrics, so that an operator sees how much of the traffic each ingress carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ingress {
    Ws,
    SocketIo,
}

impl Ingress {
    pub const ALL: [Ingress; 2] = [Self::Ws, Self::SocketIo];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::SocketIo => "socketio",
        }
    }
}

/// Which way a signal for another peer left this edge (see `router`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoutingPath {
    /// Handed over in process.
    Local,
    /// On the region's bus (Redis, or the in-memory bus).
    Region,
    /// Through this region's replica to the target region's replica.
    CrossRegion,
    /// Same region, but the bus could not carry it: through the coordinator replicas.
    CoordinatorFallback,
    /// The target had no socket (it is detached): kept in its pending buffer.
    Pending,
}

// The routing counters are indexed by `RoutingPath as usize`: `ALL` lists the paths in that
// order.
const _: () = {
    let mut i = 0;
    while i < RoutingPath::ALL.len() {
        assert!(RoutingPath::ALL[i] as usize == i);
        i += 1;
    }
};

impl RoutingPath {
    pub const ALL: [RoutingPath; 5] = [
        Self::Local,
        Self::Region,
        Self::CrossRegion,
        Self::CoordinatorFallback,
        Self::Pending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Region => "region",
            Self::CrossRegion => "cross_region",
            Self::CoordinatorFallback => "coordinator_fallback",
            Self::Pending => "pending",
        }
    }
}

/// Redis operations whose failures are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedisOp {
    Connect,
    Ping,
    Publish,
    Subscribe,
    Decode,
}

impl RedisOp {
    pub const ALL: [RedisOp; 5] = [
        Self::Connect,
        Self::Ping,
        Self::Publish,
        Self::Subscribe,
        Self::Decode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Ping => "ping",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Decode => "decode",
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client sent a close frame.
    ClientClose,
    /// The client closed with a 4000–4099 code: it will resume the session elsewhere.
    ClientDetach,
    /// The socket ended without a close frame.
    Abrupt,
    KeepaliveTimeout,
    SlowConsumer,
    /// Its peer resumed on another socket (this one had not noticed it was dead).
    Replaced,
    FrameTooLarge,
    InvalidUtf8,
    Shutdown,
    ProtocolError,
}

impl CloseReason {
    /// Whether the session ends with the socket. Otherwise it is detached: the peer keeps
    /// its rooms for the grace period and may resume on any edge of the region.
    pub fn ends_session(self) -> bool {
        matches!(
            self,
            Self::ClientClose | Self::FrameTooLarge | Self::InvalidUtf8 | Self::ProtocolError
        )
    }

    pub const ALL: [CloseReason; 10] = [
        Self::ClientClose,
        Self::ClientDetach,
        Self::Abrupt,
        Self::KeepaliveTimeout,
        Self::SlowConsumer,
        Self::Replaced,
        Self::FrameTooLarge,
        Self::InvalidUtf8,
        Self::Shutdown,
        Self::ProtocolError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClose => "client_close",
            Self::ClientDetach => "client_detach",
            Self::Abrupt => "abrupt",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::SlowConsumer => "slow_consumer",
            Self::Replaced => "replaced",
            Self::FrameTooLarge => "frame_too_large",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::Shutdown => "shutdown",
            Self::ProtocolError => "protocol_error",
        }
    }
}

/// The message type of a frame as sent (a replayed frame), for the sent-messages metric.
pub fn sent_kind_of(frame: &str) -> &'static str {
    let ty = frame
        .split_once("\"type\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(ty, _)| ty);
    SENT_TYPES
        .iter()
        .find(|t| Some(**t) == ty)
        .copied()
        .unwrap_or("signal")
}

/// Client message types, plus `invalid` for frames that did not decode.
pub const RECEIVED_TYPES: [&str; 9] = [
    "join",
    "leave",
    "signal",
    "ping",
    "resume",
    "contacts",
    "invite",
    "list-rooms",
    "invalid",
];
/// Server message types.
pub const SENT_TYPES: [&str; 15] = [
    "welcome",
    "resumed",
    "reconnect",
    "expired",
    "joined",
    "peer-joined",
    "left",
    "peer-left",
    "signal",
    "pong",
    "error",
    "contacts-set",
    "contact",
    "invite",
    "rooms",
];
/// How a relayed signal reached its target's edge: in process, on the region's bus, through
/// the coordinator replicas of this region, or from another region through the gateways.
pub const RELAY_PATHS: [&str; 4] = ["local", "region", "cross_region", "coordinator"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPath {
    Local,
    Region,
    CrossRegion,
    Coordinator,
}

/// Handles for every metric, resolved once at start-up.
pub struct EdgeMetrics {
    connections_open: [Gauge; 2],
    connections_accepted: [Counter; 2],
    /// WebSocket connections idle enough to hold no buffers (`connection::Socket`).
    pub sockets_parked: Gauge,
    closed: IngressHandles<CloseReason>,
    received: IngressHandles<&'static str>,
    sent: IngressHandles<&'static str>,
    /// The `signal` entries of `received` and `sent`, by ingress: counted twice per relayed
    /// message, they are not looked up.
    received_signal: [Counter; 2],
    sent_signal: [Counter; 2],
    errors: Handles<ErrorCode>,
    pub relay_local: Histogram,
    pub relay_region: Histogram,
    pub relay_cross_region: Histogram,
    pub relay_coordinator: Histogram,
    /// Indexed by `RoutingPath as usize`: counted for every signal, so no lookup.
    routing: [Counter; RoutingPath::ALL.len()],
    redis_errors: Handles<RedisOp>,
    /// 1 while the region's Redis carries this edge's signals (reachable and subscribed).
    pub redis_up: Gauge,
    /// Signals from other edges that could not be delivered here (target gone).
    pub relay_undeliverable: Counter,
    pub join_seconds: Histogram,
    pub rooms_tracked: Gauge,
    pub registry_resyncs: Counter,
    /// Committed joins answered `unavailable` because their room events did not come in time.
    pub joins_given_up: Counter,
    refused: Handles<&'static str>,
    resumes: Handles<&'static str>,
    /// Signals whose sender was told `expired`.
    pub signals_expired: Counter,
    /// Sessions saved for a later resume when their socket ended.
    pub sessions_detached: Counter,
    /// Signals replayed or handed over from pending buffers on resume.
    pub signals_replayed: Counter,
    /// Signals in this process's pending buffers (without Redis; Redis: not tracked here).
    pub signals_pending: Gauge,
    /// Connections told to reconnect elsewhere while draining.
    pub drain_notices: Counter,
    contacts_requests: Handles<&'static str>,
    invites: Handles<&'static str>,
    /// Contact hashes watched / published by this edge's sessions (set with `rooms_tracked`).
    pub contact_watches: Gauge,
    pub contact_published: Gauge,
    list_rooms: Handles<&'static str>,
    /// Time from a `list-rooms` request to its answer.
    pub list_rooms_seconds: Histogram,
}

/// Results of `resume` requests.
pub const RESUME_RESULTS: [&str; 5] = ["ok", "bad_token", "no_session", "gap", "unavailable"];

impl EdgeMetrics {
    pub fn new() -> Self {
        describe_gauge!(CONNECTIONS_OPEN, "WebSocket connections currently open");
        describe_counter!(CONNECTIONS_ACCEPTED, "WebSocket connections accepted");
        describe_gauge!(
            SOCKETS_PARKED,
            "WebSocket connections parked: idle, holding no read or write buffer"
        );
        describe_counter!(
            CONNECTIONS_CLOSED,
            "WebSocket connections closed, by reason"
        );
        describe_counter!(
            ALLOCATOR_COLLECTIONS,
            "Times a runtime thread about to sleep gave the allocator's freed memory back"
        );
        // Exposed (at 0) before the first collection.
        counter!(ALLOCATOR_COLLECTIONS).increment(0);
        describe_counter!(MESSAGES_RECEIVED, "Client messages received, by type");
        describe_counter!(MESSAGES_SENT, "Messages sent to clients, by type");
        describe_histogram!(
            SIGNAL_RELAY_SECONDS,
            Unit::Seconds,
            "Time from reading a signal to writing it to the target's socket, by path"
        );
        describe_counter!(ERRORS, "Error frames sent to clients, by code");
        describe_histogram!(
            JOIN_SECONDS,
            Unit::Seconds,
            "Time from a join request to its commit in the registry"
        );
        describe_counter!(
            COORDINATOR_RECONNECTS,
            "Times the edge's stream to its coordinator replica ended and was opened again"
        );
        counter!(COORDINATOR_RECONNECTS).increment(0);
        describe_counter!(
            RELAY_RESENT,
            "Signals to other edges sent again because the target edge had not acknowledged them"
        );
        describe_counter!(
            RELAY_GIVEN_UP,
            "Signals to other edges given up on: unacknowledged for 15 s"
        );
        describe_counter!(
            RELAY_DUPLICATES,
            "Copies of relayed signals that had arrived already, dropped"
        );
        describe_counter!(
            RELAY_SKIPPED,
            "Relayed signals never received: later ones were delivered after waiting 5 s for them"
        );
        describe_gauge!(
            RELAY_UNACKED,
            "Signals sent to other edges and not yet acknowledged"
        );
        for name in [
            RELAY_RESENT,
            RELAY_GIVEN_UP,
            RELAY_DUPLICATES,
            RELAY_SKIPPED,
        ] {
            counter!(name).increment(0);
        }
        gauge!(RELAY_UNACKED).set(0.0);
        describe_counter!(
            CONNECTIONS_REFUSED,
            "Connections and WebSocket upgrade requests refused, by reason"
        );
        describe_gauge!(ROOMS_TRACKED, "Rooms with at least one member on this edge");
        describe_counter!(
            CONTACTS_REQUESTS,
            "Contact set updates (`contacts` requests), by outcome"
        );
        describe_counter!(INVITES, "`invite` requests, by outcome");
        describe_gauge!(
            CONTACT_WATCHES,
            "Contact hashes watched by the sessions of this edge"
        );
        describe_gauge!(
            CONTACT_PUBLISHED,
            "Contact hashes published by the sessions of this edge"
        );

        describe_counter!(
            JOINS_GIVEN_UP,
            "Joins the registry committed whose room events did not reach this edge in time, answered unavailable"
        );
        counter!(JOINS_GIVEN_UP).increment(0);
        describe_counter!(
            REGISTRY_RESYNCS,
            "Times the edge re-read rooms after falling behind the registry's events"
        );
        describe_counter!(
            RELAY_UNDELIVERABLE,
            "Signals relayed from other edges whose target was no longer here"
        );
        describe_counter!(
            ROUTING_DECISIONS,
            "Signals for a peer on another edge or this one, by the path chosen"
        );
        describe_counter!(REDIS_ERRORS, "Failed Redis bus operations, by operation");
        describe_gauge!(
            REDIS_UP,
            "1 while the region's Redis carries same-region signals, else 0"
        );
        describe_counter!(RESUMES, "Resume requests, by result");
        describe_counter!(
            SIGNALS_EXPIRED,
            "Signals never delivered whose sender was told `expired` (grace period over, or pending buffer full)"
        );
        describe_counter!(
            SESSIONS_DETACHED,
            "Sessions saved for a resume when their socket ended without a close from the client"
        );
        describe_counter!(
            SIGNALS_REPLAYED,
            "Frames replayed from the replay window or handed over from pending buffers on resume"
        );
        describe_gauge!(
            SIGNALS_PENDING,
            "Signals waiting in this process's pending buffers (in-memory sessions only)"
        );
        describe_counter!(
            DRAIN_NOTICES,
            "Connections sent `reconnect` because the edge is draining"
        );
        describe_counter!(
            LIST_ROOMS,
            "Public-room listing requests (list-rooms), by outcome"
        );
        describe_histogram!(
            LIST_ROOMS_SECONDS,
            Unit::Seconds,
            "Time from a list-rooms request to its answer"
        );
        Self {
            list_rooms: LIST_ROOMS_OUTCOMES
                .iter()
                .map(|o| (*o, counter!(LIST_ROOMS, "outcome" => *o)))
                .collect(),
            list_rooms_seconds: histogram!(LIST_ROOMS_SECONDS),
            resumes: RESUME_RESULTS
                .iter()
                .map(|r| (*r, counter!(RESUMES, "result" => *r)))
                .collect(),
            signals_expired: counter!(SIGNALS_EXPIRED),
            sessions_detached: counter!(SESSIONS_DETACHED),
            signals_replayed: counter!(SIGNALS_REPLAYED),
            signals_pending: gauge!(SIGNALS_PENDING),
            drain_notices: counter!(DRAIN_NOTICES),
            contacts_requests: CONTACTS_OUTCOMES
                .iter()
                .map(|o| (*o, counter!(CONTACTS_REQUESTS, "outcome" => *o)))
                .collect(),
            invites: INVITE_OUTCOMES
                .iter()
                .map(|o| (*o, counter!(INVITES, "outcome" => *o)))
                .collect(),
            contact_watches: gauge!(CONTACT_WATCHES),
            contact_published: gauge!(CONTACT_PUBLISHED),
            connections_open: Ingress::ALL
                .map(|i| gauge!(CONNECTIONS_OPEN, "ingress" => i.as_str())),
            sockets_parked: gauge!(SOCKETS_PARKED),
            connections_accepted: Ingress::ALL
                .map(|i| counter!(CONNECTIONS_ACCEPTED, "ingress" => i.as_str())),
            closed: by_ingress(
                &CloseReason::ALL,
                |i, r| counter!(CONNECTIONS_CLOSED, "ingress" => i.as_str(), "reason" => r.as_str()),
            ),
            received_signal: Ingress::ALL
                .map(|i| counter!(MESSAGES_RECEIVED, "ingress" => i.as_str(), "type" => "signal")),
            sent_signal: Ingress::ALL
                .map(|i| counter!(MESSAGES_SENT, "ingress" => i.as_str(), "type" => "signal")),
            received: by_ingress(
                &RECEIVED_TYPES,
                |i, t| counter!(MESSAGES_RECEIVED, "ingress" => i.as_str(), "type" => *t),
            ),
            sent: by_ingress(
                &SENT_TYPES,
                |i, t| counter!(MESSAGES_SENT, "ingress" => i.as_str(), "type" => *t),
            ),
            errors: ErrorCode::ALL
                .iter()
                .map(|c| (*c, counter!(ERRORS, "code" => c.as_str())))
                .collect(),
            relay_local: histogram!(SIGNAL_RELAY_SECONDS, "path" => RELAY_PATHS[0]),
            relay_region: histogram!(SIGNAL_RELAY_SECONDS, "path" => RELAY_PATHS[1]),
            relay_cross_region: histogram!(SIGNAL_RELAY_SECONDS, "path" => RELAY_PATHS[2]),
            relay_coordinator: histogram!(SIGNAL_RELAY_SECONDS, "path" => RELAY_PATHS[3]),
            routing: RoutingPath::ALL.map(|p| counter!(ROUTING_DECISIONS, "path" => p.as_str())),
            redis_errors: RedisOp::ALL
                .iter()
                .map(|o| (*o, counter!(REDIS_ERRORS, "op" => o.as_str())))
                .collect(),
            redis_up: gauge!(REDIS_UP),
            relay_undeliverable: counter!(RELAY_UNDELIVERABLE),
            join_seconds: histogram!(JOIN_SECONDS),
            rooms_tracked: gauge!(ROOMS_TRACKED),
            registry_resyncs: counter!(REGISTRY_RESYNCS),
            joins_given_up: counter!(JOINS_GIVEN_UP),
            refused: REFUSAL_REASONS
                .iter()
                .map(|r| (*r, counter!(CONNECTIONS_REFUSED, "reason" => *r)))
                .collect(),
        }
    }

    pub fn relay(&self, path: RelayPath) -> &Histogram {
        match path {
            RelayPath::Local => &self.relay_local,
            RelayPath::Region => &self.relay_region,
            RelayPath::CrossRegion => &self.relay_cross_region,
            RelayPath::Coordinator => &self.relay_coordinator,
        }
    }

    pub fn routed(&self, path: RoutingPath) {
        self.routing[path as usize].increment(1);
    }

    pub fn redis_error(&self, op: RedisOp) {
        if let Some(c) = self.redis_errors.get(&op) {
            c.increment(1);
        }
    }

    /// A connection of `ingress` was accepted: counted, and open until [`closed`](Self::closed).
    pub fn opened(&self, ingress: Ingress) {
        self.connections_accepted[ingress as usize].increment(1);
        self.connections_open[ingress as usize].increment(1.0);
    }

    pub fn closed(&self, ingress: Ingress, reason: CloseReason) {
        self.connections_open[ingress as usize].decrement(1.0);
        if let Some(c) = self.closed.get(&(ingress, reason)) {
            c.increment(1);
        }
    }

    pub fn received(&self, ingress: Ingress, ty: &'static str) {
        if ty == "signal" {
            self.received_signal[ingress as usize].increment(1);
        } else if let Some(c) = self.received.get(&(ingress, ty)) {
            c.increment(1);
        }
    }

    /// `n` signals written to clients of `ingress`.
    pub fn sent_signals(&self, ingress: Ingress, n: u64) {
        self.sent_signal[ingress as usize].increment(n);
    }

    pub fn sent(&self, ingress: Ingress, ty: &'static str) {
        if ty == "signal" {
            self.sent_signal[ingress as usize].increment(1);
        } else if let Some(c) = self.sent.get(&(ingress, ty)) {
            c.increment(1);
        }
    }

    pub fn refused(&self, reason: &'static str) {
        if let Some(c) = self.refused.get(reason) {
            c.increment(1);
        }
    }

    pub fn resume(&self, result: &'static str) {
        if let Some(c) = self.resumes.get(result) {
            c.increment(1);
        }
    }

    pub fn contacts_request(&self, outcome: &'static str) {
        if let Some(c) = self.contacts_requests.get(outcome) {
            c.increment(1);
        }
    }

    pub fn invite(&self, outcome: &'static str) {
        if let Some(c) = self.invites.get(outcome) {
            c.increment(1);
        }
    }

    /// One `list-rooms` request's outcome (from [`LIST_ROOMS_OUTCOMES`]).
    pub fn list_rooms(&self, outcome: &'static str) {
        if let Some(c) = self.list_rooms.get(outcome) {
            c.increment(1);
        }
    }

    pub fn error(&self, code: ErrorCode) {
        if let Some(c) = self.errors.get(&code) {
            c.increment(1);
        }
    }
}

/// One handle per ingress and key.
fn by_ingress<K: Copy + Eq + std::hash::Hash>(
    keys: &[K],
    make: impl Fn(Ingress, &K) -> Counter,
) -> IngressHandles<K> {
    let make = &make;
    Ingress::ALL
        .iter()
        .flat_map(|i| keys.iter().map(move |k| ((*i, *k), make(*i, k))))
        .collect()
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}
