//! The server API: HTTP/JSON under `/api/v1/` on the replica's HTTP listener, for the
//! application's own servers (docs/openapi.yaml is its contract).
//!
//! Any replica serves it: reads come from the replica's applied state; kicks and closes are
//! registry commands, executed here or forwarded to the leader like an edge's writes; server
//! messages travel the signal path (this replica → the target edge's replica → the edge). So a
//! peer connected in any region can be kicked or messaged from any replica.
//!
//! Every request needs an API key (`Authorization: Bearer <key>`), one of [`ApiKeys`]; the
//! cluster secret is not one. Errors are JSON, `{"error": {"code", "message"}}`, with the
//! codes of [`ApiError`]. Imports `grpc` (the registry service's writes and relay),
//! `replica`, `registry`, `metrics`.

mod error;
pub mod keys;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use error::ApiError;
pub use keys::{ApiKeys, KeyError};

use crate::grpc::registry_service::RegistryService;
use crate::metrics;
use crate::registry::{Outcome, PeerId, Rejection, RoomId, RoomView};
use crate::replica::Replica;

/// Default page size of `GET /api/v1/rooms`.
pub const DEFAULT_PAGE_ROOMS: usize = 100;
/// Largest page size a client may ask for.
pub const MAX_PAGE_ROOMS: usize = 1_000;
/// Default cap on a request body (`--api-max-body-bytes`): a server message's `data` is
/// bounded by it, and is relayed like a signal, whose frames edges cap at 64 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024;
/// What a server message names as its sender: no peer id is `server` (peer ids are 32 hex
/// digits), so clients cannot mistake it for a peer.
pub const SERVER_SENDER: &str = "server";

/// What the server API needs.
#[derive(Clone)]
pub struct ApiConfig {
    pub keys: ApiKeys,
    pub max_body_bytes: usize,
}

#[derive(Clone)]
struct Api {
    replica: Replica,
    registry: RegistryService,
    keys: Arc<ApiKeys>,
}

/// The `/api/v1/` routes, to be merged into the replica's HTTP router.
pub fn router(replica: Replica, registry: RegistryService, config: ApiConfig) -> Router {
    let api = Api {
        replica,
        registry,
        keys: Arc::new(config.keys),
    };
    let v1 = Router::new()
        .route("/rooms", get(list_rooms))
        .route("/rooms/{room}", get(show_room).delete(close_room))
        .route("/rooms/{room}/peers/{peer}", delete(kick_peer))
        .route("/rooms/{room}/messages", post(send_message))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(api);
    Router::new().nest("/api/v1", v1)
}

/// Refuses requests without a valid key (401) before anything else runs, and counts every
/// answer by operation and status.
async fn authenticate(State(api): State<Api>, request: Request, next: Next) -> Response {
    let operation = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let operation = format!("{} {operation}", request.method());
    let presented = bearer(request.headers());
    let response = match presented.map(|key| api.keys.check(key)) {
        None => {
            ApiError::Unauthorized("missing API key (Authorization: Bearer <key>)").into_response()
        }
        Some(None) => ApiError::Unauthorized("invalid API key").into_response(),
        Some(Some(name)) => {
            tracing::debug!(key = name, %operation, "server API request");
            next.run(request).await
        }
    };
    metrics::api_request(&operation, response.status().as_u16());
    response
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let prefix = b"Bearer ";
    (value.len() > prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &value[prefix.len()..])
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn room_id(raw: &str) -> Result<RoomId, ApiError> {
    RoomId::new(raw).map_err(|e| ApiError::InvalidRoom(e.to_string()))
}

fn peer_id(raw: &str) -> Result<PeerId, ApiError> {
    PeerId::new(raw).map_err(|e| ApiError::InvalidPeer(e.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct RoomSummaryJson {
    room: String,
    members: usize,
    regions: Vec<String>,
}

#[derive(Serialize)]
struct RoomPage {
    rooms: Vec<RoomSummaryJson>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /api/v1/rooms?limit=&cursor=`: rooms in id order. The cursor is opaque to clients
/// (the hex of the last room id of the page), so pages stay stable while rooms come and go.
async fn list_rooms(
    State(api): State<Api>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::BadField(e.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE_ROOMS);
    if !(1..=MAX_PAGE_ROOMS).contains(&limit) {
        return Err(ApiError::BadField(format!(
            "limit must be between 1 and {MAX_PAGE_ROOMS}"
        )));
    }
    let after = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => {
            let raw = hex::decode(c).map_err(|_| ApiError::BadCursor)?;
            let text = String::from_utf8(raw).map_err(|_| ApiError::BadCursor)?;
            Some(RoomId::new(text).map_err(|_| ApiError::BadCursor)?)
        }
    };
    let (views, more) = api.replica.rooms_page(after.as_ref(), limit);
    let next_cursor = more
        .then(|| views.last().map(|v| hex::encode(v.room.as_str())))
        .flatten();
    let rooms = views.iter().map(summary).collect();
    Ok(axum::Json(RoomPage { rooms, next_cursor }).into_response())
}

fn summary(view: &RoomView) -> RoomSummaryJson {
    let mut regions: Vec<String> = view.members.iter().map(|m| m.region.to_string()).collect();
    regions.sort();
    regions.dedup();
    RoomSummaryJson {
        room: view.room.to_string(),
        members: view.members.len(),
        regions,
    }
}

#[derive(Serialize)]
struct MemberJson {
    peer_id: String,
    meta: Value,
    region: String,
    edge: String,
    /// When the peer joined (ms since the Unix epoch, the leader's clock); null when the
    /// registry did not record it (joins committed before it did).
    joined_at_ms: Option<u64>,
}

#[derive(Serialize)]
struct RoomJson {
    room: String,
    epoch: u64,
    members: Vec<MemberJson>,
}

/// `room` as the group that homes it has it (this region's or another's).
async fn home_view(api: &Api, room: &RoomId) -> Result<RoomView, ApiError> {
    api.registry
        .room_anywhere(room)
        .await
        .map_err(ApiError::from_status)?
        .ok_or(ApiError::UnknownRoom)
}

/// `GET /api/v1/rooms/{room}`.
async fn show_room(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::InvalidRoom(e.body_text()))?;
    let room = room_id(&raw)?;
    let (view, times) = match api.replica.room_with_join_times(&room) {
        Some(found) => found,
        // Homed in another region (or nowhere): read from its home, without join times.
        None => {
            let view = home_view(&api, &room).await?;
            let times = vec![None; view.members.len()];
            (view, times)
        }
    };
    let members = view
        .members
        .into_iter()
        .zip(times)
        .map(|(m, joined_at_ms)| MemberJson {
            peer_id: m.peer.to_string(),
            // Validated by the edge at join time; an unreadable one shows as an empty object.
            meta: serde_json::from_str(&m.meta)
                .unwrap_or_else(|_| Value::Object(Default::default())),
            region: m.region.to_string(),
            edge: m.edge.to_string(),
            joined_at_ms,
        })
        .collect();
    Ok(axum::Json(RoomJson {
        room: view.room.to_string(),
        epoch: view.epoch,
        members,
    })
    .into_response())
}

/// `DELETE /api/v1/rooms/{room}/peers/{peer}`: the peer leaves the room; the others get
/// `peer-left` with reason `removed`, the peer an `error` `removed`.
async fn kick_peer(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((raw_room, raw_peer)) = path.map_err(|e| ApiError::InvalidRoom(e.body_text()))?;
    let room = room_id(&raw_room)?;
    let peer = peer_id(&raw_peer)?;
    let outcome = api
        .registry
        .remove_peer_for_api(&room, &peer)
        .await
        .map_err(ApiError::from_status)?;
    match outcome {
        Outcome::Left { epoch } => Ok(axum::Json(serde_json::json!({
            "room": room.as_str(),
            "peer_id": peer.as_str(),
            "reason": "removed",
            "epoch": epoch,
        }))
        .into_response()),
        Outcome::Rejected(Rejection::UnknownRoom) => Err(ApiError::UnknownRoom),
        Outcome::Rejected(_) => Err(ApiError::UnknownPeer),
        _ => Err(ApiError::Internal),
    }
}

/// `DELETE /api/v1/rooms/{room}`: every member leaves with reason `closed`.
async fn close_room(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::InvalidRoom(e.body_text()))?;
    let room = room_id(&raw)?;
    let outcome = api
        .registry
        .close_room_for_api(&room)
        .await
        .map_err(ApiError::from_status)?;
    match outcome {
        Outcome::Left { epoch } => Ok(axum::Json(serde_json::json!({
            "room": room.as_str(),
            "closed": true,
            "epoch": epoch,
        }))
        .into_response()),
        Outcome::Rejected(_) => Err(ApiError::UnknownRoom),
        _ => Err(ApiError::Internal),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    /// Any JSON value, passed to the peers as the frame's `data`.
    data: Option<Value>,
    /// One member's peer id; absent: every member of the room.
    to: Option<String>,
}

/// `POST /api/v1/rooms/{room}/messages` `{"data": ..., "to"?: peer_id}`: a `message` frame
/// from `server` to one member or all of them. 202: handed to the signal path (delivery is
/// at most once, like a signal's).
async fn send_message(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::InvalidRoom(e.body_text()))?;
    let room = room_id(&raw)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge
        } else {
            ApiError::BadJson(e.body_text())
        }
    })?;
    // serde_json refuses lone surrogate escapes and out-of-range numbers, which strict
    // client parsers would choke on; what is relayed is re-encoded from the parsed value.
    let message: MessageBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::from_json(&e))?;
    let data = message
        .data
        .ok_or_else(|| ApiError::BadField("data is required".into()))?;
    let to = message.to.as_deref().map(peer_id).transpose()?;
    let view = home_view(&api, &room).await?;
    let targets: Vec<_> = view
        .members
        .into_iter()
        .filter(|m| to.as_ref().is_none_or(|p| &m.peer == p))
        .collect();
    if to.is_some() && targets.is_empty() {
        return Err(ApiError::UnknownPeer);
    }
    let frame = serde_json::json!({
        "type": "message",
        "room": room.as_str(),
        "from": SERVER_SENDER,
        "data": data,
    })
    .to_string();
    api.registry.relay_frame(&room, &targets, &frame);
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "room": room.as_str(), "recipients": targets.len() })),
    )
        .into_response())
}
