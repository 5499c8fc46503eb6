//! The region `failover` starts when it is given no `--edge`: one coordinator replica and
//! two edges sharing a Redis and the session secret, started through the test kit (as
//! deploy/local-cluster.sh lays a region out). The Redis is one `redis-server` started here,
//! or the operator's own (`--redis`), reached as the edges would reach it in production:
//! over TLS with its CA and a client certificate, as an ACL user whose password comes from a
//! file. Every process is killed when the region is dropped.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use heliograph_testkit::bin::{self, COORDINATOR, EDGE};
use heliograph_testkit::cluster::{Cluster, Spec};
use serde::Serialize;

/// The edge that fails, and the one its clients resume on.
const EDGES: [&str; 2] = ["edge-a", "edge-b"];
const REGION: &str = "local";
/// How long the edges may take to reach the operator's Redis (a TLS handshake, AUTH).
const REDIS_UP: Duration = Duration::from_secs(15);

/// The Redis of the region, and how its edges reach it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RegionRedis {
    /// The operator's Redis (`redis://` or `rediss://`); `None`: start a `redis-server`.
    #[serde(serialize_with = "without_userinfo")]
    pub url: Option<String>,
    /// The edges' `--redis-ca`, `--redis-client-cert`, `--redis-client-key`,
    /// `--redis-username` and `--redis-password-file`.
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl RegionRedis {
    /// The edge flags for this Redis (empty when the region starts its own: the test kit
    /// passes its URL).
    fn edge_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let Some(url) = &self.url else {
            return args;
        };
        args.extend(["--redis".to_owned(), url.clone()]);
        let path = |flag: &str, p: &Option<PathBuf>| {
            p.iter()
                .flat_map(|p| [flag.to_owned(), p.display().to_string()])
                .collect::<Vec<_>>()
        };
        args.extend(path("--redis-ca", &self.ca));
        args.extend(path("--redis-client-cert", &self.client_cert));
        args.extend(path("--redis-client-key", &self.client_key));
        if let Some(u) = &self.username {
            args.extend(["--redis-username".to_owned(), u.clone()]);
        }
        args.extend(path("--redis-password-file", &self.password_file));
        args
    }
}

/// A URL as it may be written to a result file: a password in it is left out.
fn without_userinfo<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    let shown = url
        .as_deref()
        .map(|u| match (u.split_once("://"), u.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &u[at + 1..]),
            _ => u.to_owned(),
        });
    shown.serialize(s)
}

pub struct Region {
    cluster: Cluster,
}

impl Region {
    /// Starts the replica, the Redis (unless it is the operator's) and both edges; returns
    /// once both edges are ready and see Redis up.
    pub async fn start(redis: &RegionRedis) -> Result<Region> {
        bin::path(COORDINATOR)?;
        bin::path(EDGE)?;
        let edge_args = redis.edge_args();
        let edge_args: Vec<&str> = edge_args.iter().map(String::as_str).collect();
        let own: &[&str] = if redis.url.is_none() { &[REGION] } else { &[] };
        let cluster = Cluster::start(Spec {
            replicas: &[(1, REGION)],
            edges: &[(EDGES[0], REGION), (EDGES[1], REGION)],
            redis: own,
            edge_args: &edge_args,
            ..Spec::default()
        })
        .await;
        // The test kit waits for the Redis it started; the operator's is waited for here.
        for name in EDGES {
            let node = &cluster.edge(name).node;
            if let Err(e) = heliograph_testkit::edge::wait_redis_up(&node.addr, REDIS_UP).await {
                bail!(
                    "{name} never reached Redis: {e:#}\n{}",
                    tail(&node.log(), 20)
                );
            }
        }
        eprintln!(
            "failover: started a region (1 replica, 2 edges) in {}",
            cluster.path().display()
        );
        Ok(Region { cluster })
    }

    /// WebSocket URL and PID of the edge that fails.
    pub fn failing(&self) -> (String, u32) {
        let node = &self.cluster.edge(EDGES[0]).node;
        (node.ws_url(), node.pid())
    }

    /// WebSocket URL of the edge the clients resume on.
    pub fn other(&self) -> String {
        self.cluster.edge(EDGES[1]).node.ws_url()
    }
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_password_in_the_url_stays_out_of_the_result_file() {
        let shown = |url: &str| {
            let r = RegionRedis {
                url: Some(url.to_owned()),
                ..RegionRedis::default()
            };
            serde_json::to_value(&r).unwrap()["url"].clone()
        };
        assert_eq!(
            shown("rediss://heliograph:pw@redis.internal:6380/0"),
            "rediss://redis.internal:6380/0"
        );
        assert_eq!(shown("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }

    #[test]
    fn the_edges_get_every_flag_given() {
        let r = RegionRedis {
            url: Some("rediss://127.0.0.1:6380/".into()),
            ca: Some("/ca.pem".into()),
            username: Some("heliograph".into()),
            password_file: Some("/pw".into()),
            ..RegionRedis::default()
        };
        assert_eq!(
            r.edge_args(),
            [
                "--redis",
                "rediss://127.0.0.1:6380/",
                "--redis-ca",
                "/ca.pem",
                "--redis-username",
                "heliograph",
                "--redis-password-file",
                "/pw"
            ]
        );
        assert!(RegionRedis::default().edge_args().is_empty());
    }
}
