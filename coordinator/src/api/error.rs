//! The server API's errors and their one JSON form: `{"error": {"code", "message"}}`.
//! Codes are stable (docs/openapi.yaml lists them); messages are for humans.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("the body is not valid JSON: {0}")]
    BadJson(String),
    #[error("{0}")]
    BadField(String),
    #[error("invalid room id: {0}")]
    InvalidRoom(String),
    #[error("invalid peer id: {0}")]
    InvalidPeer(String),
    #[error("the cursor is not one this API returned")]
    BadCursor,
    #[error("the room has no members")]
    UnknownRoom,
    #[error("the peer is not a member of the room")]
    UnknownPeer,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the body is larger than the limit")]
    BodyTooLarge,
    #[error("the registry could not commit the change in time (no leader); retry")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::BadJson(_) => "bad-json",
            Self::BadField(_) => "bad-field",
            Self::InvalidRoom(_) => "invalid-room",
            Self::InvalidPeer(_) => "invalid-peer",
            Self::BadCursor => "bad-cursor",
            Self::UnknownRoom => "unknown-room",
            Self::UnknownPeer => "unknown-peer",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::BodyTooLarge => "body-too-large",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::BadJson(_)
            | Self::BadField(_)
            | Self::InvalidRoom(_)
            | Self::InvalidPeer(_)
            | Self::BadCursor => StatusCode::BAD_REQUEST,
            Self::UnknownRoom | Self::UnknownPeer | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A body that did not parse: bad JSON, or JSON of the wrong shape.
    pub fn from_json(e: &serde_json::Error) -> Self {
        match e.classify() {
            serde_json::error::Category::Data => Self::BadField(e.to_string()),
            _ => Self::BadJson(e.to_string()),
        }
    }

    /// A write that failed inside the cluster. Details stay in the log.
    pub fn from_status(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::Cancelled => Self::Unavailable,
            tonic::Code::InvalidArgument => Self::BadField(status.message().to_owned()),
            _ => {
                tracing::warn!(%status, "a server API write failed");
                Self::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if matches!(self, Self::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"heliograph\""),
            );
        }
        response
    }
}
