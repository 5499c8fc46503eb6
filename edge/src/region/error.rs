//! Errors of the region backend.

/// The session store failed (unreachable, or it answered something unexpected).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store: Redis: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("session store: the call timed out")]
    TimedOut,
    #[error("session store: unreadable rooms: {0}")]
    Json(#[source] serde_json::Error),
    #[error("session store: unexpected reply: {0}")]
    BadReply(&'static str),
}

/// The Redis settings cannot be used (checked before anything connects).
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    #[error("Redis TLS material: {0}")]
    Tls(#[source] redis::RedisError),
    #[error("a Redis CA or client certificate needs a rediss:// URL")]
    TlsWithoutRediss,
    #[error("Redis Sentinel needs at least one sentinel address and the master's name")]
    SentinelIncomplete,
}

impl UrlError {
    pub(crate) fn into_redis(self) -> redis::RedisError {
        match self {
            Self::Url(e) | Self::Tls(e) => e,
            other => redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "invalid Redis settings",
                other.to_string(),
            )),
        }
    }
}
