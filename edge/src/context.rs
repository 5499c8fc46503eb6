//! What every connection and HTTP route of one edge shares, built once by `start`.

use std::sync::Arc;

use heliograph_coordinator::registry::{EdgeId, Region as RegionName};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::value::RawValue;
use tokio_util::task::TaskTracker;

use crate::auth::JoinAuth;
use crate::config::Config;
use crate::limits::ConnectionLimiter;
use crate::metrics::EdgeMetrics;
use crate::region::Region;
use crate::registry::Registry;
use crate::rooms::RoomIndex;
use crate::router::Router;
use crate::session::TokenKey;
use crate::shutdown::Shutdown;

pub(crate) struct EdgeContext {
    pub(crate) config: Config,
    pub(crate) edge_id: EdgeId,
    pub(crate) region: RegionName,
    pub(crate) index: Arc<RoomIndex>,
    pub(crate) registry: Registry,
    /// Where a signal goes (router.rs); owns the region backend.
    pub(crate) router: Arc<Router>,
    pub(crate) metrics: Arc<EdgeMetrics>,
    /// The configured `ice_servers` of `welcome`, encoded once.
    pub(crate) ice_servers: Box<RawValue>,
    pub(crate) shutdown: Arc<Shutdown>,
    /// Signs and checks resume tokens.
    pub(crate) tokens: TokenKey,
    pub(crate) prometheus: Option<PrometheusHandle>,
    /// Every connection's task, awaited (with a deadline) at shutdown.
    pub(crate) connection_tasks: TaskTracker,
    pub(crate) join_auth: JoinAuth,
    pub(crate) connections: ConnectionLimiter,
}

impl EdgeContext {
    /// The region backend: the store of this edge's sessions.
    pub(crate) fn store(&self) -> &Region {
        self.router.region()
    }
}
