//! A cluster of real processes: coordinator replicas (the first bootstrapped, so it leads;
//! the others added through it), a `redis-server` per region that asks for one, and edges
//! pointed at their region's replicas and Redis. Started, formed and ready, or the test
//! fails. When a test fails, the edges' log tails are printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::cut::Cut;
use crate::edge::{EdgeOptions, Node};
use crate::process::Launchable;
use crate::redis::Redis;
use crate::replica::{Admin, Replica, ReplicaOptions};
use crate::wait::{DEADLINE, STARTUP};
use crate::{CLUSTER_SECRET, SESSION_SECRET};

/// What to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spec<'a> {
    /// `(id, region)`; the first is bootstrapped and so leads.
    pub replicas: &'a [(u64, &'a str)],
    /// `(edge name, region)`; each edge uses its region's replicas.
    pub edges: &'a [(&'a str, &'a str)],
    /// Regions whose edges share a Redis.
    pub redis: &'a [&'a str],
    /// More `serve` flags for every replica.
    pub replica_args: &'a [&'a str],
    /// More flags for every edge.
    pub edge_args: &'a [&'a str],
    /// Environment variables of every replica and edge.
    pub env: &'a [(&'a str, &'a str)],
    /// Edge i of a region lists the region's replicas starting with its i-th (modulo their
    /// count), so that the edges attach to different replicas; otherwise every edge lists
    /// them in id order (and attaches to the first).
    pub rotate_replicas: bool,
    /// Region-homed rooms: each region's replicas form a group of their own (its first
    /// replica bootstrapped), and every group is told the other regions' gateways. Otherwise
    /// all replicas form one group.
    pub homed: bool,
}

/// An edge process of the cluster, with its name and region.
pub struct Edge {
    pub name: String,
    pub region: String,
    pub node: Node,
}

pub struct Cluster {
    pub dir: TempDir,
    pub admin: Admin,
    pub replicas: Vec<Replica>,
    pub redis: HashMap<String, Redis>,
    pub edges: Vec<Edge>,
    /// Region-homed: `(from region, to region)` → the relays through which `from` reaches
    /// the gateways of `to` (see [`Cluster::partition`]).
    cuts: HashMap<(String, String), Vec<Cut>>,
    replica_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts and forms the replicas, then Redis and the edges; returns once every replica
    /// sees the whole cluster and every edge is ready (with its Redis bus up).
    pub async fn start(spec: Spec<'_>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            admin: Admin::new(),
            replicas: Vec::new(),
            redis: HashMap::new(),
            edges: Vec::new(),
            cuts: HashMap::new(),
            replica_args: spec.replica_args.iter().map(|s| (*s).to_owned()).collect(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            dir,
        };
        for (id, region) in spec.replicas {
            let r = cluster.start_replica(*id, region);
            cluster.replicas.push(r);
        }
        if spec.homed {
            cluster.form_regions().await;
        } else {
            cluster.admin.form(&cluster.replicas, 0).unwrap();
            let apis: Vec<&str> = cluster.replicas.iter().map(|r| r.api.as_str()).collect();
            cluster
                .admin
                .wait_formed(&apis, spec.replicas[0].0, DEADLINE * 2)
                .unwrap();
        }
        for region in spec.redis {
            cluster.redis.insert((*region).to_owned(), Redis::start());
        }
        for (i, (name, region)) in spec.edges.iter().enumerate() {
            let nth = spec.edges[..i].iter().filter(|(_, r)| r == region).count();
            let first = if spec.rotate_replicas { nth } else { 0 };
            let node = cluster.start_edge(name, region, first, spec.edge_args);
            cluster.edges.push(Edge {
                name: (*name).into(),
                region: (*region).into(),
                node,
            });
        }
        for e in &cluster.edges {
            e.node.wait_ready().await;
        }
        cluster.wait_redis_up().await;
        cluster
    }

    /// The regions of the replicas, in order of first appearance.
    pub fn regions(&self) -> Vec<String> {
        let mut regions: Vec<String> = Vec::new();
        for r in &self.replicas {
            if !regions.contains(&r.region) {
                regions.push(r.region.clone());
            }
        }
        regions
    }

    /// The API addresses of `region`'s replicas.
    pub fn apis_of(&self, region: &str) -> Vec<&str> {
        self.replicas
            .iter()
            .filter(|r| r.region == region)
            .map(|r| r.api.as_str())
            .collect()
    }

    /// One group per region, each told the others' gateways (through relays that
    /// [`Cluster::partition`] can cut); returns once every replica sees its whole group and
    /// follows every other region.
    async fn form_regions(&mut self) {
        let regions = self.regions();
        for region in &regions {
            let members: Vec<&Replica> = self
                .replicas
                .iter()
                .filter(|r| &r.region == region)
                .collect();
            let via = &members[0].api;
            self.admin.bootstrap(via).unwrap();
            for r in &members[1..] {
                self.admin.add(via, r).unwrap_or_else(|e| panic!("{e:#}"));
            }
            self.admin
                .wait_formed(&self.apis_of(region), members[0].id, DEADLINE * 2)
                .unwrap();
        }
        for region in &regions {
            for other in regions.iter().filter(|o| *o != region) {
                let mut cuts = Vec::new();
                for target in self.apis_of(other) {
                    cuts.push(Cut::start(target).await);
                }
                self.cuts.insert((region.clone(), other.clone()), cuts);
            }
        }
        for region in &regions {
            let via = self.apis_of(region)[0];
            for other in regions.iter().filter(|o| *o != region) {
                let gateways: Vec<&str> = self.cuts[&(region.clone(), other.clone())]
                    .iter()
                    .map(|c| c.addr.as_str())
                    .collect();
                self.admin
                    .set_region(via, other, &gateways)
                    .unwrap_or_else(|e| panic!("{e:#}"));
            }
        }
        let apis: Vec<&str> = self.replicas.iter().map(|r| r.api.as_str()).collect();
        let others = regions.len() - 1;
        self.admin
            .wait_statuses(
                &apis,
                DEADLINE * 2,
                "every replica to follow every other region",
                |s| {
                    s.iter().all(|v| {
                        v["regions"].as_array().is_some_and(|rs| {
                            rs.len() == others && rs.iter().all(|r| r["connected"] == true)
                        })
                    })
                },
            )
            .unwrap();
    }

    /// Region-homed: cuts `region` off from every other region (both ways).
    pub fn partition(&self, region: &str) {
        self.each_cut_of(region, Cut::cut);
    }

    /// Ends [`Cluster::partition`].
    pub fn heal(&self, region: &str) {
        self.each_cut_of(region, Cut::heal);
    }

    fn each_cut_of(&self, region: &str, f: impl Fn(&Cut)) {
        assert!(
            !self.cuts.is_empty(),
            "only a region-homed cluster can be partitioned"
        );
        for ((from, to), cuts) in &self.cuts {
            if from == region || to == region {
                cuts.iter().for_each(&f);
            }
        }
    }

    fn start_replica(&self, id: u64, region: &str) -> Replica {
        let root = self.dir.path();
        let mut options = ReplicaOptions::new(id, region, &root.join(format!("replica-{id}")))
            .log(&root.join(format!("replica-{id}.log")))
            .args(&self.replica_args);
        options.launch.env.clone_from(&self.env);
        Replica::start(options)
    }

    /// Starts edge `name` of `region` on its region's replicas (listed from the `first`-th,
    /// modulo their count) and Redis.
    fn start_edge(&self, name: &str, region: &str, first: usize, extra: &[&str]) -> Node {
        let mut ids: Vec<u64> = self
            .replicas
            .iter()
            .filter(|r| r.region == region)
            .map(|r| r.id)
            .collect();
        assert!(!ids.is_empty(), "region {region} has no replica");
        let n = ids.len();
        ids.rotate_left(first % n);
        let mut args = vec![
            "--region".to_owned(),
            region.to_owned(),
            "--edge-id".to_owned(),
            name.to_owned(),
            "--session-secret".to_owned(),
            SESSION_SECRET.to_owned(),
        ];
        if let Some(r) = self.redis.get(region) {
            args.extend(["--redis".to_owned(), r.url()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.edge_on(name, &ids, &args)
    }

    /// An edge named `name` attached to replicas `ids` (tried in that order) with `extra`
    /// flags; the caller owns it.
    pub fn edge_on(&self, name: &str, ids: &[u64], extra: &[&str]) -> Node {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let urls = self.urls(ids);
        let mut options = EdgeOptions::new(&dir.join("data"))
            .log(&dir.join("edge.log"))
            .args(["--coordinator", &urls, "--cluster-secret", CLUSTER_SECRET])
            .args(extra);
        options.launch.env.clone_from(&self.env);
        Node::spawn(&options).unwrap_or_else(|e| panic!("edge {name}: {e:#}"))
    }

    pub fn edge(&self, name: &str) -> &Edge {
        self.edges.iter().find(|e| e.name == name).unwrap()
    }

    pub fn edge_mut(&mut self, name: &str) -> &mut Edge {
        self.edges.iter_mut().find(|e| e.name == name).unwrap()
    }

    pub fn replica(&self, id: u64) -> &Replica {
        self.replicas.iter().find(|r| r.id == id).unwrap()
    }

    pub fn replica_mut(&mut self, id: u64) -> &mut Replica {
        self.replicas.iter_mut().find(|r| r.id == id).unwrap()
    }

    /// API URLs of replicas `ids`, in that order (an edge tries them in turn).
    pub fn urls(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|id| self.replica(*id).url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts replica `id` in `region` and makes it a voter through the first live replica.
    pub fn grow(&mut self, id: u64, region: &str) {
        let r = self.start_replica(id, region);
        let via = self
            .replicas
            .iter()
            .find(|r| r.alive())
            .unwrap()
            .api
            .clone();
        self.admin.add(&via, &r).unwrap_or_else(|e| panic!("{e:#}"));
        self.replicas.push(r);
    }

    /// Polls every live replica's status until `pred` holds for all (blocking).
    pub fn wait_all(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let apis: Vec<&str> = self
            .replicas
            .iter()
            .filter(|r| r.alive())
            .map(|r| r.api.as_str())
            .collect();
        self.admin
            .wait_statuses(&apis, within, what, |all| all.iter().all(&pred))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The leader every live replica agrees on.
    pub fn leader(&self) -> u64 {
        let all = self.wait_all(STARTUP, "a leader everyone agrees on", |v| {
            v["leader"].is_u64()
        });
        let leader = all[0]["leader"].as_u64().unwrap();
        assert!(all.iter().all(|v| v["leader"] == leader), "{all:#?}");
        leader
    }

    /// Waits until every live replica has applied at least the leader's commit index at the
    /// time of the call.
    pub fn wait_converged(&self) {
        let commit = self
            .wait_all(STARTUP, "a leader", |v| v["leader"].is_u64())
            .iter()
            .filter_map(|v| v["commit_index"].as_u64())
            .max()
            .unwrap();
        self.wait_all(STARTUP, "every replica applied the commit index", |v| {
            v["applied_index"].as_u64() >= Some(commit)
        });
    }

    /// Waits until every edge with a Redis reports it up.
    pub async fn wait_redis_up(&self) {
        for e in self
            .edges
            .iter()
            .filter(|e| self.redis.contains_key(&e.region))
        {
            e.node
                .wait_metric("heliograph_edge_redis_up", |v| v == 1.0)
                .await;
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    /// A failing test shows what the edges logged.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for e in &self.edges {
            let log = e.node.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- edge {} ({}) log tail ---", e.name, e.region);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
