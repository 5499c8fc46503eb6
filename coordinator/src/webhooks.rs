//! Webhook delivery: the leader POSTs the replicated outbox's records to their endpoints.
//!
//! The outbox (`registry::WebhookOutbox`) is part of the replicated state, so each event is
//! produced once for the cluster and survives restarts and leader changes. Only the leader
//! delivers; when a record has reached an endpoint (a 2xx answer) or its attempts ran out, the
//! leader commits `AckWebhooks` and the record stops waiting for that endpoint. A leader that
//! dies between a delivery and its ack leaves the record in the outbox, and the next leader
//! sends it again: delivery is at least once, and receivers de-duplicate by event id.
//!
//! Signaling never waits on this: delivery runs in tasks of its own, each endpoint with at
//! most `concurrency` requests in flight, each bounded by `timeout`; the only thing it asks of
//! the registry is a small ack command per endpoint and tick.
//!
//! Body and signature (docs/WEBHOOKS.md): `{"id", "event", "timestamp_ms", "data"}`, with
//! `X-Heliograph-Timestamp: <unix seconds of the attempt>` and
//! `X-Heliograph-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
use crate::http_client::{HttpClient, Trust};
use crate::metrics;
use crate::registry::{Command, WebhookEvent, WebhookRecord};
use crate::replica::Replica;

/// Defaults of the `--webhook-*` flags.
pub const DEFAULT_QUEUE_RECORDS: u32 = 10_000;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 12;
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_CONCURRENCY: usize = 8;
pub const DEFAULT_BACKOFF_MIN_MS: u64 = 100;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// How often the delivery loop looks at the outbox: the added latency of a webhook, and the
/// rate of ack commits per endpoint at most.
const TICK: Duration = Duration::from_millis(50);
/// Records of one endpoint scheduled at a time (the rest wait in the outbox).
const WINDOW_RECORDS: usize = 1_024;
/// Ids acknowledged in one command.
const ACK_BATCH: usize = 1_024;
/// Header names.
pub const HEADER_EVENT_ID: &str = "x-heliograph-event-id";
pub const HEADER_TIMESTAMP: &str = "x-heliograph-timestamp";
pub const HEADER_SIGNATURE: &str = "x-heliograph-signature";

/// One endpoint. The secret is never printed.
#[derive(Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    secret: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub endpoints: Vec<Endpoint>,
    /// Records the replicated outbox holds at most (oldest dropped when full).
    pub queue_records: u32,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub concurrency: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// What `https://` endpoints are verified against (`--webhook-ca`).
    pub trust: Trust,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookConfigError {
    #[error("--webhook wants NAME=URL, got {0:?}")]
    Form(String),
    #[error("webhook {0:?}: the name must be 1-64 characters of [A-Za-z0-9_.-]")]
    Name(String),
    #[error("webhook {0:?} appears twice")]
    Duplicate(String),
    #[error("webhook {0:?}: the URL must start with http:// or https://")]
    Url(String),
    #[error("webhook {0:?} has no secret (--webhook-secret-file or HELIOGRAPH_WEBHOOK_SECRETS)")]
    NoSecret(String),
    #[error("webhook secret {0:?}: at least 16 bytes, for an endpoint that is configured")]
    Secret(String),
    #[error("reading webhook secret file {0}: {1}")]
    File(String, String),
    #[error("{0} must be at least 1")]
    Limit(&'static str),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Builds the endpoints from `--webhook NAME=URL`, `--webhook-secret-file NAME=PATH` and
/// `HELIOGRAPH_WEBHOOK_SECRETS` (`NAME=SECRET` items separated by commas).
pub fn endpoints(
    urls: &[String],
    secret_files: &[String],
    secrets_env: Option<&str>,
) -> Result<Vec<Endpoint>, WebhookConfigError> {
    let mut secrets: HashMap<String, Vec<u8>> = HashMap::new();
    for item in secret_files {
        let (name, path) = item
            .split_once('=')
            .ok_or_else(|| WebhookConfigError::Form(item.clone()))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| WebhookConfigError::File(path.to_owned(), e.to_string()))?;
        secrets.insert(
            name.to_owned(),
            text.trim_end_matches(['\n', '\r']).as_bytes().to_vec(),
        );
    }
    for item in secrets_env.unwrap_or_default().split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (name, secret) = item
            .split_once('=')
            .ok_or_else(|| WebhookConfigError::Form("<redacted>".into()))?;
        secrets.insert(name.to_owned(), secret.as_bytes().to_vec());
    }
    let mut out: Vec<Endpoint> = Vec::new();
    for item in urls {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| WebhookConfigError::Form(item.clone()))?;
        if !valid_name(name) {
            return Err(WebhookConfigError::Name(name.to_owned()));
        }
        if out.iter().any(|e| e.name == name) {
            return Err(WebhookConfigError::Duplicate(name.to_owned()));
        }
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !scheme_ok || url.parse::<hyper::Uri>().is_err() {
            return Err(WebhookConfigError::Url(name.to_owned()));
        }
        let secret = secrets
            .remove(name)
            .ok_or_else(|| WebhookConfigError::NoSecret(name.to_owned()))?;
        if secret.len() < 16 {
            return Err(WebhookConfigError::Secret(name.to_owned()));
        }
        out.push(Endpoint {
            name: name.to_owned(),
            url: url.to_owned(),
            secret: Arc::new(secret),
        });
    }
    if let Some(name) = secrets.keys().next() {
        return Err(WebhookConfigError::Secret(name.clone()));
    }
    Ok(out)
}

impl WebhookConfig {
    pub fn validate(&self) -> Result<(), WebhookConfigError> {
        if self.queue_records == 0 {
            return Err(WebhookConfigError::Limit("--webhook-queue-records"));
        }
        if self.max_attempts == 0 {
            return Err(WebhookConfigError::Limit("--webhook-max-attempts"));
        }
        if self.concurrency == 0 {
            return Err(WebhookConfigError::Limit("--webhook-concurrency"));
        }
        if self.timeout.is_zero() {
            return Err(WebhookConfigError::Limit("--webhook-timeout-ms"));
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.name.clone()).collect()
    }

    /// What the replicated outbox should be configured with (capacity 0: off).
    fn capacity(&self) -> u32 {
        if self.endpoints.is_empty() {
            0
        } else {
            self.queue_records
        }
    }
}

/// The signature header's value for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The JSON body of a record.
pub fn body(record: &WebhookRecord) -> Vec<u8> {
    let data = match &record.event {
        WebhookEvent::RoomStarted { room } | WebhookEvent::RoomFinished { room } => {
            serde_json::json!({ "room": room.as_str() })
        }
        WebhookEvent::PeerJoined {
            room,
            peer,
            edge,
            region,
            meta,
        } => serde_json::json!({
            "room": room.as_str(),
            "peer_id": peer.as_str(),
            "edge": edge.as_str(),
            "region": region.as_str(),
            "meta": serde_json::from_str::<serde_json::Value>(meta)
                .unwrap_or_else(|_| serde_json::json!({})),
        }),
        WebhookEvent::PeerLeft {
            room,
            peer,
            edge,
            reason,
        } => serde_json::json!({
            "room": room.as_str(),
            "peer_id": peer.as_str(),
            "edge": edge.as_str(),
            "reason": reason.as_str(),
        }),
    };
    serde_json::json!({
        "id": record.id.to_string(),
        "event": record.event.name(),
        "timestamp_ms": record.at_ms,
        "data": data,
    })
    .to_string()
    .into_bytes()
}

/// Runs the delivery loop until `shutdown`; every replica runs it, only the leader delivers.
pub async fn run(replica: Replica, config: WebhookConfig, shutdown: CancellationToken) {
    if config
        .endpoints
        .iter()
        .any(|e| e.url.starts_with("https://"))
    {
        tracing::info!(
            platform_cas = config.trust.platform_cas(),
            extra_cas = config.trust.extra_cas(),
            "https:// webhook endpoints are verified against these CA certificates"
        );
        if config.trust.platform_cas() + config.trust.extra_cas() == 0 {
            tracing::warn!("no CA certificate to verify https:// webhook endpoints with");
        }
    }
    let client = HttpClient::new(config.timeout, &config.trust);
    let config = Arc::new(config);
    let tasks = TaskTracker::new();
    let mut endpoints: Vec<EndpointState> = config
        .endpoints
        .iter()
        .map(|e| EndpointState::new(e.clone(), config.concurrency))
        .collect();
    let mut configured = false;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let (queued, dropped) = replica.webhook_outbox(|o| (o.len(), o.dropped()));
        metrics::webhook_outbox(queued, dropped);
        if !replica.is_leader() {
            // A new leader starts from the replicated outbox; what this one had in flight
            // is sent again by it (at least once).
            configured = false;
            for e in &mut endpoints {
                e.reset();
            }
            continue;
        }
        if !configured {
            configured = configure(&replica, &config).await;
            if !configured {
                continue;
            }
        }
        for e in &mut endpoints {
            e.collect_results(&config);
            e.flush_acks(&replica).await;
            e.schedule(&replica, &client, &config, &tasks);
        }
    }
    tasks.close();
    // In-flight deliveries are bounded by the timeout; nothing waits for them beyond it.
    let _ = tokio::time::timeout(config.timeout, tasks.wait()).await;
}

/// Makes the replicated outbox match this replica's configuration. `true` once it does.
async fn configure(replica: &Replica, config: &WebhookConfig) -> bool {
    let names = config.names();
    let capacity = config.capacity();
    if replica.webhook_outbox(|o| o.is_configured(&names, capacity)) {
        return true;
    }
    let command = Command::ConfigureWebhooks {
        endpoints: names,
        capacity,
    };
    match replica.execute(command).await {
        Ok(_) => {
            tracing::info!(capacity, "webhook outbox configured");
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not configure the webhook outbox yet");
            false
        }
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered(u64),
    Failed(u64),
}

/// One endpoint's delivery state on the leader (not replicated: attempt counts restart on a
/// new leader).
struct EndpointState {
    endpoint: Endpoint,
    permits: Arc<Semaphore>,
    in_flight: HashSet<u64>,
    attempts: HashMap<u64, u32>,
    not_before: HashMap<u64, Instant>,
    acks: Vec<u64>,
    results_tx: mpsc::UnboundedSender<Attempt>,
    results: mpsc::UnboundedReceiver<Attempt>,
}

impl EndpointState {
    fn new(endpoint: Endpoint, concurrency: usize) -> Self {
        // Results are at most one per in-flight request, bounded by `concurrency`.
        let (results_tx, results) = mpsc::unbounded_channel();
        Self {
            endpoint,
            permits: Arc::new(Semaphore::new(concurrency)),
            in_flight: HashSet::new(),
            attempts: HashMap::new(),
            not_before: HashMap::new(),
            acks: Vec::new(),
            results_tx,
            results,
        }
    }

    fn reset(&mut self) {
        self.attempts.clear();
        self.not_before.clear();
        self.acks.clear();
        // Results of requests still in flight arrive later and are dropped by `collect`.
        self.in_flight.clear();
    }

    fn collect_results(&mut self, config: &WebhookConfig) {
        while let Ok(result) = self.results.try_recv() {
            match result {
                Attempt::Delivered(id) => {
                    if self.in_flight.remove(&id) {
                        metrics::webhook_delivered();
                        self.attempts.remove(&id);
                        self.not_before.remove(&id);
                        self.acks.push(id);
                    }
                }
                Attempt::Failed(id) => {
                    if !self.in_flight.remove(&id) {
                        continue;
                    }
                    let n = self.attempts.entry(id).or_insert(0);
                    *n += 1;
                    if *n >= config.max_attempts {
                        metrics::webhook_failed();
                        tracing::warn!(
                            endpoint = %self.endpoint.name,
                            id,
                            attempts = *n,
                            "webhook given up after its last attempt"
                        );
                        self.attempts.remove(&id);
                        self.not_before.remove(&id);
                        self.acks.push(id);
                    } else {
                        metrics::webhook_retried();
                        let delay = backoff(config, *n);
                        self.not_before.insert(id, Instant::now() + delay);
                    }
                }
            }
        }
    }

    async fn flush_acks(&mut self, replica: &Replica) {
        if self.acks.is_empty() {
            return;
        }
        let n = self.acks.len().min(ACK_BATCH);
        let ids: Vec<u64> = self.acks[..n].to_vec();
        let command = Command::AckWebhooks {
            endpoint: self.endpoint.name.clone(),
            ids,
        };
        match replica.execute(command).await {
            // Applied here by now: the outbox no longer lists them for this endpoint.
            Ok(_) => {
                self.acks.drain(..n);
            }
            // Kept, and tried again at the next tick (or sent again by the next leader).
            Err(e) => tracing::debug!(error = %e, "could not acknowledge webhooks yet"),
        }
    }

    fn schedule(
        &mut self,
        replica: &Replica,
        client: &HttpClient,
        config: &Arc<WebhookConfig>,
        tasks: &TaskTracker,
    ) {
        let name = self.endpoint.name.clone();
        let records = replica.webhook_outbox(|o| o.pending_for(&name, 0, WINDOW_RECORDS));
        let now = Instant::now();
        let pending_acks: HashSet<u64> = self.acks.iter().copied().collect();
        for record in records {
            let id = record.id;
            if self.in_flight.contains(&id)
                || pending_acks.contains(&id)
                || self.not_before.get(&id).is_some_and(|t| *t > now)
            {
                continue;
            }
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                break;
            };
            self.in_flight.insert(id);
            let endpoint = self.endpoint.clone();
            let client = client.clone();
            let results = self.results_tx.clone();
            let timeout = config.timeout;
            tasks.spawn(async move {
                let outcome = deliver(&client, &endpoint, &record, timeout).await;
                drop(permit);
                let _ = results.send(outcome);
            });
        }
    }
}

/// `backoff_min · 2^(attempt-1)`, capped at `backoff_max`, then a random share of it between
/// a half and all of it (so that retries of many records spread out).
fn backoff(config: &WebhookConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(config.backoff_max);
    let jitter: f64 = rand::rng().random_range(0.5..=1.0);
    capped.mul_f64(jitter)
}

async fn deliver(
    client: &HttpClient,
    endpoint: &Endpoint,
    record: &WebhookRecord,
    timeout: Duration,
) -> Attempt {
    let body = body(record);
    let timestamp = now_ms() / 1_000;
    let headers = [
        ("content-type", "application/json".to_owned()),
        (HEADER_EVENT_ID, record.id.to_string()),
        (HEADER_TIMESTAMP, timestamp.to_string()),
        (
            HEADER_SIGNATURE,
            signature(&endpoint.secret, timestamp, &body),
        ),
    ];
    match client
        .send("POST", &endpoint.url, &headers, body, timeout)
        .await
    {
        Ok(answer) if (200..300).contains(&answer.status) => Attempt::Delivered(record.id),
        Ok(answer) => {
            tracing::debug!(endpoint = %endpoint.name, status = answer.status, "webhook refused");
            Attempt::Failed(record.id)
        }
        Err(e) => {
            tracing::debug!(endpoint = %endpoint.name, error = %e, "webhook not delivered");
            Attempt::Failed(record.id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        // HMAC-SHA256("secret", "1700000000.{}"), computed independently.
        let sig = signature(b"secret", 1_700_000_000, b"{}");
        assert!(sig.starts_with("v1="));
        assert_eq!(sig.len(), 3 + 64);
        assert_ne!(sig, signature(b"secret", 1_700_000_001, b"{}"));
        assert_ne!(sig, signature(b"other", 1_700_000_000, b"{}"));
    }

    #[test]
    fn endpoints_need_a_name_an_http_url_and_a_secret() {
        let ok = endpoints(
            &[
                "a=http://127.0.0.1:9/hook".into(),
                "b=https://hooks.example.com/in".into(),
            ],
            &[],
            Some("a=0123456789abcdef,b=0123456789abcdef"),
        )
        .unwrap();
        assert_eq!(ok[0].name, "a");
        assert_eq!(ok[1].url, "https://hooks.example.com/in");
        assert!(!format!("{ok:?}").contains("0123456789abcdef"));
        let err = |urls: &[&str], env: &str| {
            let urls: Vec<String> = urls.iter().map(|s| (*s).to_owned()).collect();
            endpoints(&urls, &[], Some(env)).unwrap_err()
        };
        assert_eq!(
            err(&["a=http://x/"], ""),
            WebhookConfigError::NoSecret("a".into())
        );
        assert_eq!(
            err(&["a=ftp://x/"], "a=0123456789abcdef"),
            WebhookConfigError::Url("a".into())
        );
        assert_eq!(
            err(&["a=http://x/"], "a=short"),
            WebhookConfigError::Secret("a".into())
        );
        assert_eq!(
            err(&[], "b=0123456789abcdef"),
            WebhookConfigError::Secret("b".into())
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let config = WebhookConfig {
            endpoints: Vec::new(),
            queue_records: 1,
            max_attempts: 1,
            timeout: Duration::from_secs(1),
            concurrency: 1,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            trust: Trust::load(None).unwrap(),
        };
        for attempt in 1..40 {
            let d = backoff(&config, attempt);
            let full = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20)))
                .min(config.backoff_max);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?} vs {full:?}");
        }
    }
}
