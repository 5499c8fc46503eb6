//! `registry-scale`: the room registry at scale, without sockets. Starts a 3-replica group
//! through the test kit, registers K synthetic edges through the registry's gRPC API (their
//! leases renewed throughout), fills the registry with M members in R rooms by concurrent
//! joins, and measures: each replica's RSS per member, a snapshot's build time and size (the
//! admin `Snapshot` call), how long a 4th, empty replica takes to be added and catch up (its
//! applied index reaching the leader's), and sequential join latency at that size against the
//! same on the empty registry, in the same run.
//!
//! Member `i` joins room `i % R` through edge `i % K`; edge `k` is attached to replica
//! `k % 3`, as real edges spread over a group's replicas. Latency probes join a fresh member
//! into a fresh room, one at a time, through an edge attached to a follower (the leader
//! commits; the follower forwards, as for two edges in three).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use heliograph_proto::admin::v1 as admin_pb;
use heliograph_proto::admin::v1::admin_client::AdminClient;
use heliograph_proto::registry::v1 as pb;
use heliograph_proto::registry::v1::registry_client::RegistryClient;
use heliograph_testkit::CLUSTER_SECRET;
use heliograph_testkit::bin::{self, COORDINATOR};
use heliograph_testkit::cluster::{Cluster, Spec};
use heliograph_testkit::process::Launchable;
use heliograph_testkit::replica::{Replica, ReplicaOptions};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{Percentiles, latency_histogram};
use crate::procstat::{self, Pid};

/// Replicas of the group; the 4th is the one that catches up.
const REPLICAS: usize = 3;
const REGION: &str = "local";
/// One registry call's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Tries of one fill join (a call that failed is retried; joins are idempotent).
const JOIN_TRIES: usize = 5;
/// Probe joins made before each measured series, not recorded.
const PROBE_WARMUP: usize = 50;
/// How long the new replica may take to catch up before the run gives up on it.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);
/// Between two looks at the new replica's applied index.
const POLL: Duration = Duration::from_millis(20);
/// The targets.
pub const TARGET_BYTES_PER_MEMBER: f64 = 1024.0;
pub const TARGET_CATCH_UP_SECS: f64 = 30.0;
pub const TARGET_P99_RATIO: f64 = 1.25;

#[derive(Debug, Clone, Serialize)]
pub struct RegistryScaleSettings {
    pub members: u64,
    pub rooms: u64,
    pub edges: usize,
    pub concurrency: usize,
    pub samples: usize,
    pub lease_ms: u64,
    /// More `serve` flags for every replica.
    pub replica_args: Vec<String>,
}

/// One replica's memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplicaMemory {
    pub id: u64,
    pub leader: bool,
    /// With the edges registered and no member.
    pub rss_before_bytes: u64,
    /// Once it has applied every join of the fill.
    pub rss_after_bytes: u64,
    /// (after − before) ÷ members.
    pub bytes_per_member: f64,
    /// After the snapshot built on request (the leader builds it; the others are unchanged
    /// unless they built one of their own meanwhile).
    pub rss_after_snapshot_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotFigures {
    /// The replica that built it (the leader).
    pub replica: u64,
    pub index: u64,
    pub bytes: u64,
    pub bytes_per_member: f64,
    pub build_ms: u64,
    /// Time the admin call took as the generator saw it.
    pub call_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CatchUpFigures {
    pub replica: u64,
    /// The leader's applied index when the new replica was added.
    pub target_index: u64,
    /// From asking the leader to add it until its applied index reached `target_index`.
    pub secs: f64,
    /// Until the add call returned (learner caught up and promoted to voter).
    pub add_member_secs: f64,
    /// Snapshots the new replica installed (1: it caught up from the snapshot).
    pub snapshots_installed: u64,
    /// The new replica's RSS once caught up, and per member (over an empty replica's RSS).
    pub rss_bytes: u64,
    pub bytes_per_member: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Targets {
    pub bytes_per_member: bool,
    pub catch_up: bool,
    pub join_p99: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegistryScaleResults {
    pub members: u64,
    pub rooms: u64,
    pub edges: u64,
    pub fill_secs: f64,
    pub fill_joins_per_sec: f64,
    /// Fill joins that failed every try (a rejection, or no answer).
    pub fill_errors: u64,
    /// Fill joins that needed more than one try.
    pub fill_retries: u64,
    pub lease_renewal_failures: u64,
    pub replicas: Vec<ReplicaMemory>,
    /// The largest of the group's replicas' figures.
    pub max_bytes_per_member: f64,
    pub snapshot: SnapshotFigures,
    pub catch_up: CatchUpFigures,
    /// Sequential probe joins on the empty registry and at full size.
    pub join_empty: Percentiles,
    pub join_full: Percentiles,
    pub join_p99_ratio: f64,
    pub join_p50_ratio: f64,
    pub targets: Targets,
}

/// Adds the cluster secret to every call.
#[derive(Clone)]
struct Auth(MetadataValue<Ascii>);

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Registry = RegistryClient<InterceptedService<Channel, Auth>>;
type Admin = AdminClient<InterceptedService<Channel, Auth>>;

fn auth() -> Result<Auth> {
    Ok(Auth(format!("Bearer {CLUSTER_SECRET}").parse()?))
}

async fn channel(api: &str, timeout: Duration) -> Result<Channel> {
    Channel::from_shared(format!("http://{api}"))?
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {api}"))
}

async fn registry(api: &str) -> Result<Registry> {
    Ok(
        RegistryClient::with_interceptor(channel(api, CALL_TIMEOUT).await?, auth()?)
            .max_decoding_message_size(64 << 20),
    )
}

async fn admin(api: &str) -> Result<Admin> {
    Ok(AdminClient::with_interceptor(
        channel(api, CATCH_UP_LIMIT).await?,
        auth()?,
    ))
}

/// A synthetic edge: registered with one replica, joins through it.
#[derive(Clone)]
struct Edge {
    id: String,
    replica: usize,
    client: Registry,
}

fn peer_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

async fn join(edge: &Edge, room: String, peer: String) -> Result<()> {
    let answer = edge
        .client
        .clone()
        .join(pb::JoinRequest {
            room,
            peer_id: peer,
            edge_id: edge.id.clone(),
            meta_json: "{}".into(),
            // As an edge does: each join request named (the registry keeps it per membership).
            attempt: rand::random::<u64>() | 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    if answer.rejected != 0 {
        bail!("join rejected ({})", answer.rejected);
    }
    Ok(())
}

async fn status(admin: &mut Admin) -> Result<admin_pb::StatusResponse> {
    Ok(admin
        .status(admin_pb::StatusRequest { local: true })
        .await?
        .into_inner())
}

/// `samples` sequential joins of a fresh member into a fresh room through `edge`, after a
/// few unrecorded ones.
async fn probe(edge: &Edge, label: &str, samples: usize) -> Result<Percentiles> {
    let mut hist = latency_histogram()?;
    let prefix = super::room_prefix(&format!("scale-probe-{label}"));
    for i in 0..PROBE_WARMUP + samples {
        let t = Instant::now();
        join(edge, format!("{prefix}-{i}"), peer_id())
            .await
            .with_context(|| format!("probe join {i} ({label})"))?;
        if i >= PROBE_WARMUP {
            hist.saturating_record(t.elapsed().as_micros() as u64);
        }
    }
    Ok(Percentiles::from_histogram(&hist))
}

fn rss(replica: &Replica) -> Result<u64> {
    let pid = replica
        .pid()
        .ok_or_else(|| anyhow!("replica {} is not running", replica.id))?;
    procstat::rss_bytes(Pid::Other(pid))
}

/// Waits until every replica at `apis` has applied the leader's commit index as of now.
async fn converge(admins: &mut [Admin]) -> Result<u64> {
    let mut commit = 0;
    for a in admins.iter_mut() {
        commit = commit.max(status(a).await?.commit_index.unwrap_or(0));
    }
    let deadline = Instant::now() + CATCH_UP_LIMIT;
    for a in admins.iter_mut() {
        while status(a).await?.applied_index.unwrap_or(0) < commit {
            if Instant::now() > deadline {
                bail!("replicas did not apply index {commit} in time");
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(commit)
}

fn per_member(before: u64, after: u64, members: u64) -> f64 {
    after.saturating_sub(before) as f64 / members.max(1) as f64
}

pub async fn run(settings: &RegistryScaleSettings) -> Result<RegistryScaleResults> {
    if settings.members == 0 || settings.rooms == 0 || settings.rooms > settings.members {
        bail!("need --members ≥ --rooms ≥ 1");
    }
    if settings.edges == 0 || settings.concurrency == 0 || settings.samples == 0 {
        bail!("--edges, --concurrency and --samples must be ≥ 1");
    }
    bin::path(COORDINATOR)?;
    let replica_args: Vec<&str> = settings.replica_args.iter().map(String::as_str).collect();
    let ids: Vec<(u64, &str)> = (1..=REPLICAS as u64).map(|id| (id, REGION)).collect();
    eprintln!("registry-scale: starting {REPLICAS} replicas");
    let cluster = Cluster::start(Spec {
        replicas: &ids,
        replica_args: &replica_args,
        ..Spec::default()
    })
    .await;
    let result = measure(settings, &cluster).await;
    drop(cluster);
    result
}

async fn measure(
    settings: &RegistryScaleSettings,
    cluster: &Cluster,
) -> Result<RegistryScaleResults> {
    let mut admins = Vec::new();
    for r in &cluster.replicas {
        admins.push(admin(&r.api).await?);
    }
    let leader_id = status(&mut admins[0])
        .await?
        .leader
        .ok_or_else(|| anyhow!("no leader"))?;

    // Synthetic edges, their leases renewed until the end.
    let mut edges = Vec::new();
    for k in 0..settings.edges {
        let replica = k % REPLICAS;
        let edge = Edge {
            id: format!("scale-edge-{k}"),
            replica,
            client: registry(&cluster.replicas[replica].api).await?,
        };
        let answer = edge
            .client
            .clone()
            .register_edge(pb::RegisterEdgeRequest {
                edge_id: edge.id.clone(),
                region: REGION.into(),
                address: format!("synthetic-{k}"),
                incarnation: 1,
                lease_ms: settings.lease_ms,
                ..Default::default()
            })
            .await?
            .into_inner();
        if answer.rejected != 0 {
            bail!("edge {} refused ({})", edge.id, answer.rejected);
        }
        edges.push(edge);
    }
    let renewal_failures = Arc::new(AtomicU64::new(0));
    let mut renewals = JoinSet::new();
    for edge in &edges {
        let (mut client, id) = (edge.client.clone(), edge.id.clone());
        let (lease_ms, failures) = (settings.lease_ms, renewal_failures.clone());
        renewals.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis((lease_ms / 4).max(50)));
            loop {
                tick.tick().await;
                let renewed = client
                    .renew_lease(pb::RenewLeaseRequest {
                        edge_id: id.clone(),
                        incarnation: 1,
                        lease_ms,
                    })
                    .await;
                if !matches!(renewed, Ok(ref a) if a.get_ref().rejected == 0) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let outcome = fill_and_measure(settings, cluster, &mut admins, &edges, leader_id).await;
    renewals.shutdown().await;
    let mut results = outcome?;
    results.lease_renewal_failures = renewal_failures.load(Ordering::Relaxed);
    Ok(results)
}

async fn fill_and_measure(
    settings: &RegistryScaleSettings,
    cluster: &Cluster,
    admins: &mut [Admin],
    edges: &[Edge],
    leader_id: u64,
) -> Result<RegistryScaleResults> {
    // The probe edge is attached to a follower.
    let leader_index = cluster
        .replicas
        .iter()
        .position(|r| r.id == leader_id)
        .ok_or_else(|| anyhow!("leader {leader_id} is not one of the replicas"))?;
    let probe_edge = edges
        .iter()
        .find(|e| e.replica != leader_index)
        .unwrap_or(&edges[0])
        .clone();

    converge(admins).await?;
    let before: Vec<u64> = cluster.replicas.iter().map(rss).collect::<Result<_>>()?;
    eprintln!(
        "registry-scale: {} probe joins on the empty registry",
        settings.samples
    );
    let join_empty = probe(&probe_edge, "empty", settings.samples).await?;
    let probe_members = (PROBE_WARMUP + settings.samples) as u64;

    // The fill.
    eprintln!(
        "registry-scale: {} members into {} rooms through {} edges, {} joins at a time",
        settings.members, settings.rooms, settings.edges, settings.concurrency
    );
    let rooms_prefix = super::room_prefix("scale");
    let (errors, retries, done) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    let step = (settings.members / 10).max(1);
    futures_util::stream::iter(0..settings.members)
        .map(|i| {
            let edge = &edges[(i % edges.len() as u64) as usize];
            let room = format!("{rooms_prefix}-{}", i % settings.rooms);
            let (errors, retries, done) = (&errors, &retries, &done);
            async move {
                let peer = peer_id();
                let mut last = None;
                for attempt in 0..JOIN_TRIES {
                    if attempt > 0 {
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                    match join(edge, room.clone(), peer.clone()).await {
                        Ok(()) => {
                            last = None;
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                if let Some(e) = last
                    && errors.fetch_add(1, Ordering::Relaxed) < 5
                {
                    eprintln!("registry-scale: join failed: {e:#}");
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % step == 0 {
                    eprintln!(
                        "registry-scale: {n} joins in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        })
        .buffer_unordered(settings.concurrency)
        .collect::<()>()
        .await;
    let fill_secs = started.elapsed().as_secs_f64();
    let fill_errors = errors.load(Ordering::Relaxed);
    if fill_errors * 100 > settings.members {
        bail!("{fill_errors} of {} fill joins failed", settings.members);
    }
    let members = settings.members - fill_errors;

    converge(admins).await?;
    // Let allocator and background work settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<u64> = cluster.replicas.iter().map(rss).collect::<Result<_>>()?;
    eprintln!(
        "registry-scale: {} probe joins at full size",
        settings.samples
    );
    let join_full = probe(&probe_edge, "full", settings.samples).await?;

    // A snapshot on request, built by the leader.
    eprintln!("registry-scale: snapshot on the leader");
    let t = Instant::now();
    let built = admins[leader_index]
        .snapshot(admin_pb::SnapshotRequest {})
        .await
        .context("snapshot")?
        .into_inner();
    let snapshot = SnapshotFigures {
        replica: leader_id,
        index: built.index,
        bytes: built.bytes,
        bytes_per_member: built.bytes as f64 / members as f64,
        build_ms: built.build_ms,
        call_ms: t.elapsed().as_millis() as u64,
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_snapshot: Vec<u64> = cluster.replicas.iter().map(rss).collect::<Result<_>>()?;

    // A 4th, empty replica added and caught up.
    let catch_up = catch_up(cluster, &mut admins[leader_index], members, &before).await?;

    let replicas: Vec<ReplicaMemory> = cluster
        .replicas
        .iter()
        .enumerate()
        .map(|(i, r)| ReplicaMemory {
            id: r.id,
            leader: r.id == leader_id,
            rss_before_bytes: before[i],
            rss_after_bytes: after[i],
            bytes_per_member: per_member(before[i], after[i], members + probe_members),
            rss_after_snapshot_bytes: after_snapshot[i],
        })
        .collect();
    let max_bytes_per_member = replicas
        .iter()
        .map(|r| r.bytes_per_member)
        .fold(0.0, f64::max);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let join_p99_ratio = ratio(join_full.p99_us, join_empty.p99_us);
    let join_p50_ratio = ratio(join_full.p50_us, join_empty.p50_us);
    Ok(RegistryScaleResults {
        members,
        rooms: settings.rooms,
        edges: edges.len() as u64,
        fill_secs,
        fill_joins_per_sec: settings.members as f64 / fill_secs,
        fill_errors,
        fill_retries: retries.load(Ordering::Relaxed),
        lease_renewal_failures: 0,
        targets: Targets {
            bytes_per_member: max_bytes_per_member <= TARGET_BYTES_PER_MEMBER,
            catch_up: catch_up.secs <= TARGET_CATCH_UP_SECS,
            join_p99: join_p99_ratio <= TARGET_P99_RATIO,
        },
        replicas,
        max_bytes_per_member,
        snapshot,
        catch_up,
        join_empty,
        join_full,
        join_p99_ratio,
        join_p50_ratio,
    })
}

async fn catch_up(
    cluster: &Cluster,
    leader: &mut Admin,
    members: u64,
    before: &[u64],
) -> Result<CatchUpFigures> {
    let id = REPLICAS as u64 + 1;
    let dir = cluster.path().join(format!("replica-{id}"));
    let log = cluster.path().join(format!("replica-{id}.log"));
    let options = ReplicaOptions::new(id, REGION, &dir).log(&log);
    let replica = tokio::task::spawn_blocking(move || Replica::spawn(options)).await??;
    let mut own = admin(&replica.api).await?;
    let empty_rss = rss(&replica)?;
    let target_index = status(leader)
        .await?
        .applied_index
        .ok_or_else(|| anyhow!("the leader has applied nothing"))?;
    eprintln!("registry-scale: adding replica {id}; catching up to index {target_index}");
    let started = Instant::now();
    let mut add_client = leader.clone();
    let request = admin_pb::AddMemberRequest {
        id,
        raft_addr: replica.raft.clone(),
        api_addr: replica.api.clone(),
        region: REGION.into(),
        learner_only: false,
    };
    let add = tokio::spawn(async move {
        let r = add_client.add_member(request).await;
        (r, started.elapsed())
    });
    let secs = loop {
        let s = status(&mut own).await.ok();
        if s.and_then(|s| s.applied_index).unwrap_or(0) >= target_index {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > CATCH_UP_LIMIT {
            bail!("replica {id} did not catch up within {CATCH_UP_LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    };
    let (added, add_elapsed) = add.await?;
    added.context("add member")?;
    let installed = status(&mut own).await?.snapshots_installed;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_bytes = rss(&replica)?;
    let baseline = before
        .iter()
        .copied()
        .min()
        .unwrap_or(empty_rss)
        .min(empty_rss);
    let figures = CatchUpFigures {
        replica: id,
        target_index,
        secs,
        add_member_secs: add_elapsed.as_secs_f64(),
        snapshots_installed: installed,
        rss_bytes,
        bytes_per_member: per_member(baseline, rss_bytes, members),
    };
    // The replica stops with the run (its guard kills it); remove it first so that the
    // group is not left with a dead voter while the others stop.
    let _ = leader
        .remove_member(admin_pb::RemoveMemberRequest { id })
        .await;
    drop(replica);
    Ok(figures)
}

/// The lines a person reads after a run.
pub fn summary(r: &serde_json::Value) -> String {
    let f = |path: &[&str]| {
        path.iter()
            .try_fold(r, |v, k| v.get(k))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let met = |key: &str| {
        if r["targets"][key] == true {
            "met"
        } else {
            "missed"
        }
    };
    let mut replicas = String::new();
    for rep in r["replicas"].as_array().into_iter().flatten() {
        replicas.push_str(&format!(
            "\n  replica {}{}: RSS {:.1} → {:.1} MiB ({:.0} bytes/member), {:.1} MiB after the snapshot",
            rep["id"],
            if rep["leader"] == true { " (leader)" } else { "" },
            rep["rss_before_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            rep["rss_after_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            rep["bytes_per_member"].as_f64().unwrap_or(0.0),
            rep["rss_after_snapshot_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        ));
    }
    format!(
        "registry-scale: {} members in {} rooms, filled in {:.1} s ({:.0} joins/s, {} errors){replicas}\n  \
         bytes per member (largest): {:.0}, target ≤ {TARGET_BYTES_PER_MEMBER:.0}: {}\n  \
         snapshot: {:.1} MiB ({:.0} bytes/member), built in {} ms\n  \
         new replica caught up in {:.2} s (added as voter in {:.2} s, {} snapshot(s) installed), \
         target ≤ {TARGET_CATCH_UP_SECS:.0} s: {}\n  \
         join p50/p99: empty {:.0}/{:.0} µs, full {:.0}/{:.0} µs, p99 ratio {:.2}, target ≤ \
         {TARGET_P99_RATIO}: {}",
        f(&["members"]),
        f(&["rooms"]),
        f(&["fill_secs"]),
        f(&["fill_joins_per_sec"]),
        f(&["fill_errors"]),
        f(&["max_bytes_per_member"]),
        met("bytes_per_member"),
        f(&["snapshot", "bytes"]) / 1048576.0,
        f(&["snapshot", "bytes_per_member"]),
        f(&["snapshot", "build_ms"]),
        f(&["catch_up", "secs"]),
        f(&["catch_up", "add_member_secs"]),
        f(&["catch_up", "snapshots_installed"]),
        met("catch_up"),
        f(&["join_empty", "p50_us"]),
        f(&["join_empty", "p99_us"]),
        f(&["join_full", "p50_us"]),
        f(&["join_full", "p99_us"]),
        f(&["join_p99_ratio"]),
        met("join_p99"),
    )
}
