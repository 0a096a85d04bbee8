//! Simulated proxies: real `Discovery.Stream`s, each on its own HTTP/2
//! connection, speaking exactly what `knit-proxy` speaks (its node in the
//! first request, then one ACK per response naming its version and nonce).
//! Every response is decoded by prost into `knit_proto::v1` types and then
//! walked whole: each endpoint address is parsed and the services and
//! endpoints are counted against the mesh's shape.
//!
//! The [`Tracker`] turns what the proxies see into per-change timings:
//! when a version holding a change was first received by any proxy, and
//! when the last proxy that was connected when the change was made ACKed a
//! version holding it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use knit_proto::v1 as pb;
use knit_proto::v1::discovery_client::DiscoveryClient;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::mesh_config::{MeshShape, change_of};
use crate::{BenchError, Result};

/// One change as the tracker follows it.
#[derive(Debug, Clone)]
pub struct ChangeRecord {
    /// When the file holding the change was in place.
    pub written_at: Instant,
    /// Proxies that must ACK it: the tracked ones connected when it was made.
    pub expected_acks: u32,
    pub acks: u32,
    /// The first receipt, by any proxy, of a version holding the change.
    pub first_seen: Option<Instant>,
    /// The latest first-ACK among the proxies of a version holding it.
    pub last_ack: Option<Instant>,
}

/// Counts and per-change timings shared by every simulated proxy.
#[derive(Debug)]
pub struct Tracker {
    shape: MeshShape,
    changes: Mutex<Vec<ChangeRecord>>,
    /// Tracked proxies whose first response has been ACKed.
    connected: AtomicU64,
    pub responses: AtomicU64,
    pub response_bytes: AtomicU64,
    /// Responses whose services or endpoints did not add up to the mesh,
    /// or that were NACKed for an unreadable address.
    pub mismatched: AtomicU64,
    /// Streams that ended with an error while the benchmark still ran.
    pub stream_errors: AtomicU64,
    /// Streams reopened after such an error.
    pub reconnects: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl Tracker {
    pub fn new(shape: MeshShape) -> Arc<Tracker> {
        Arc::new(Tracker {
            shape,
            changes: Mutex::new(Vec::new()),
            connected: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            mismatched: AtomicU64::new(0),
            stream_errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            first_error: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<ChangeRecord>> {
        // Plain records: a panicked holder cannot leave them torn.
        self.changes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many changes have been announced so far.
    pub fn issued(&self) -> usize {
        self.lock().len()
    }

    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// Announces change `seq` (which must be the next one) before its file
    /// is written; returns its index.
    pub fn announce(&self, written_at: Instant) -> usize {
        let expected = u32::try_from(self.connected()).unwrap_or(u32::MAX);
        let mut changes = self.lock();
        changes.push(ChangeRecord {
            written_at,
            expected_acks: expected,
            acks: 0,
            first_seen: None,
            last_ack: None,
        });
        changes.len() - 1
    }

    /// Sets when change `seq`'s file was in place.
    pub fn written(&self, seq: usize, at: Instant) {
        if let Some(change) = self.lock().get_mut(seq) {
            change.written_at = at;
        }
    }

    pub fn change(&self, seq: usize) -> Option<ChangeRecord> {
        self.lock().get(seq).cloned()
    }

    pub fn changes(&self, range: std::ops::Range<usize>) -> Vec<ChangeRecord> {
        let changes = self.lock();
        changes.get(range).map(<[_]>::to_vec).unwrap_or_default()
    }

    fn record_error(&self, error: String) {
        self.stream_errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert(error);
    }

    /// One decoded and ACKed response of a tracked proxy: every change from
    /// `from` on that the response holds and the proxy had not yet seen is
    /// counted. `seen` is the proxy's own memory of what it has counted.
    fn observe(
        &self,
        latest_by_endpoint: &HashMap<u32, u32>,
        from: usize,
        seen: &mut Vec<bool>,
        received: Instant,
        acked: Instant,
    ) {
        let mut changes = self.lock();
        seen.resize(changes.len(), false);
        for (seq, change) in changes.iter_mut().enumerate().skip(from) {
            if seen[seq] {
                continue;
            }
            let target = self.shape.change_target(seq as u32);
            let holds = latest_by_endpoint
                .get(&target)
                .is_some_and(|latest| *latest as usize >= seq);
            if !holds {
                continue;
            }
            seen[seq] = true;
            change.acks += 1;
            change.first_seen = Some(change.first_seen.map_or(received, |t| t.min(received)));
            change.last_ack = Some(change.last_ack.map_or(acked, |t| t.max(acked)));
        }
    }
}

/// Who a simulated proxy is: the sidecar of WorkloadEntry `endpoint`.
pub fn node_for(endpoint: u32, shape: &MeshShape) -> pb::Node {
    let service = shape.service_of(endpoint);
    pb::Node {
        pod_name: MeshShape::workload_name(endpoint),
        namespace: MeshShape::namespace_of(service),
        ips: vec![MeshShape::base_address(endpoint).to_string()],
        labels: HashMap::from([("app".to_owned(), MeshShape::service_name(service))]),
        service_account: MeshShape::service_account(service),
        proxy_version: concat!("knit-bench/", env!("CARGO_PKG_VERSION")).to_owned(),
    }
}

/// What a walk over one response found.
struct Walk {
    services: usize,
    endpoints: usize,
    /// endpoint index → the latest change it reflects.
    latest_by_endpoint: HashMap<u32, u32>,
}

/// Walks a decoded response whole: parses every endpoint address and
/// collects the changes the addresses reflect.
fn walk(response: &pb::DiscoveryResponse, shape: &MeshShape) -> std::result::Result<Walk, String> {
    let mut latest_by_endpoint = HashMap::new();
    let mut endpoints = 0;
    for set in &response.endpoints {
        for endpoint in &set.endpoints {
            endpoints += 1;
            let address: Ipv4Addr = endpoint.address.parse().map_err(|e| {
                format!(
                    "endpoint {} of {}/{}: address {:?}: {e}",
                    endpoint.workload_name,
                    set.service_namespace,
                    set.service_name,
                    endpoint.address
                )
            })?;
            if let Some(seq) = change_of(address) {
                latest_by_endpoint.insert(shape.change_target(seq), seq);
            }
        }
    }
    Ok(Walk {
        services: response.services.len(),
        endpoints,
        latest_by_endpoint,
    })
}

/// How one simulated proxy runs.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub grpc_addr: SocketAddr,
    pub node: pb::Node,
    /// Tracked proxies count towards change ACKs; the full-push probes do
    /// not.
    pub tracked: bool,
}

/// The first response of a stream.
#[derive(Debug, Clone, Copy)]
pub struct FirstPush {
    /// From before the connection was opened to the decoded first response.
    pub elapsed: Duration,
    pub bytes: usize,
}

/// The reconnect backoff of knit-proxy: full jitter over a doubling
/// ceiling from 100 ms, capped at 3 s, starting over after a stream that
/// lasted 5 s.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(3);
const HEALTHY_STREAM: Duration = Duration::from_secs(5);

/// Runs one proxy until `stop` says so; `first` gets the timing of the
/// first decoded response. A stream that fails, before or after that, is reopened with
/// knit-proxy's backoff, as a real proxy does, and counted in
/// `reconnects`.
pub async fn run_proxy(
    spec: ProxySpec,
    tracker: Arc<Tracker>,
    mut stop: watch::Receiver<bool>,
    first: oneshot::Sender<FirstPush>,
) {
    let mut first = Some(first);
    let mut session = Session {
        counts_from: tracker.issued(),
        seen: Vec::new(),
        version: String::new(),
    };
    let mut failures = 0u32;
    loop {
        let opened = Instant::now();
        let result = stream(&spec, &tracker, &mut stop, &mut first, &mut session).await;
        let Err(error) = result else {
            return;
        };
        if *stop.borrow() {
            return;
        }
        // Whether or not it had a config yet, a real proxy tries again;
        // whoever waits for the first config bounds how long.
        tracker.record_error(format!("{}: {error}", spec.node.pod_name));
        if opened.elapsed() >= HEALTHY_STREAM {
            failures = 0;
        }
        let ceiling = BACKOFF_BASE
            .saturating_mul(1u32 << failures.min(5))
            .min(BACKOFF_CAP);
        failures = failures.saturating_add(1);
        let delay = ceiling.mul_f64(fastrand::f64());
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        tracker.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a proxy keeps across its streams.
struct Session {
    /// The changes from this one on are this proxy's to ACK.
    counts_from: usize,
    /// Which changes it has counted.
    seen: Vec<bool>,
    /// The version it last ACKed, sent again when it reconnects.
    version: String,
}

async fn stream(
    spec: &ProxySpec,
    tracker: &Tracker,
    stop: &mut watch::Receiver<bool>,
    first: &mut Option<oneshot::Sender<FirstPush>>,
    session: &mut Session,
) -> std::result::Result<(), String> {
    let opened = Instant::now();
    // Built as knit-proxy builds its control-plane connection.
    let endpoint = Endpoint::from_shared(format!("http://{}", spec.grpc_addr))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = DiscoveryClient::new(channel);
    let (requests, outgoing) = mpsc::channel(4);
    let hello = pb::DiscoveryRequest {
        node: Some(spec.node.clone()),
        version_info: session.version.clone(),
        ..Default::default()
    };
    requests
        .send(hello)
        .await
        .map_err(|_| "the request stream closed before the first request".to_owned())?;
    let mut responses = client
        .stream(ReceiverStream::new(outgoing))
        .await
        .map_err(|status| format!("opening the stream: {status}"))?
        .into_inner();
    let shape = tracker.shape;
    let expected_endpoints = shape.endpoints as usize;
    let expected_services = shape.services as usize;
    loop {
        let response = tokio::select! {
            _ = stop.changed() => return Ok(()),
            message = responses.message() => match message {
                Ok(Some(response)) => response,
                Ok(None) => return Err("knitd closed the stream".to_owned()),
                Err(status) => return Err(format!("stream: {status}")),
            },
        };
        let received = Instant::now();
        let bytes = prost::Message::encoded_len(&response);
        let walked = walk(&response, &shape);
        let reply = match &walked {
            Ok(_) => pb::DiscoveryRequest {
                node: None,
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                error_detail: None,
            },
            // As knit-proxy does with a config it cannot use: NACK, naming
            // why, and keep the version it had.
            Err(reason) => pb::DiscoveryRequest {
                node: None,
                version_info: session.version.clone(),
                response_nonce: response.nonce.clone(),
                error_detail: Some(pb::ErrorDetail {
                    message: reason.clone(),
                }),
            },
        };
        requests
            .send(reply)
            .await
            .map_err(|_| "the request stream closed".to_owned())?;
        let acked = Instant::now();
        let Ok(walked) = walked else {
            // NACKed: the proxy keeps its version and its stream.
            tracker.mismatched.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        session.version.clone_from(&response.version_info);
        tracker.responses.fetch_add(1, Ordering::Relaxed);
        tracker
            .response_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        if walked.services != expected_services || walked.endpoints != expected_endpoints {
            tracker.mismatched.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(first) = first.take() {
            if spec.tracked {
                tracker.connected.fetch_add(1, Ordering::Relaxed);
            }
            let _ = first.send(FirstPush {
                elapsed: received - opened,
                bytes,
            });
        }
        if spec.tracked {
            tracker.observe(
                &walked.latest_by_endpoint,
                session.counts_from,
                &mut session.seen,
                received,
                acked,
            );
        }
    }
}

/// A set of running simulated proxies.
pub struct Fleet {
    runtime: tokio::runtime::Handle,
    tasks: tokio::task::JoinSet<()>,
    stop: watch::Sender<bool>,
    pub tracker: Arc<Tracker>,
    grpc_addr: SocketAddr,
    shape: MeshShape,
    /// Tracked proxies started so far; proxy `i` is WorkloadEntry `i`.
    pub started: u32,
    /// How long each tracked proxy took to its first decoded response.
    pub first_pushes: Vec<Duration>,
}

impl Fleet {
    pub fn new(runtime: tokio::runtime::Handle, grpc_addr: SocketAddr, shape: MeshShape) -> Fleet {
        let (stop, _) = watch::channel(false);
        Fleet {
            runtime,
            tasks: tokio::task::JoinSet::new(),
            stop,
            tracker: Tracker::new(shape),
            grpc_addr,
            shape,
            started: 0,
            first_pushes: Vec::new(),
        }
    }

    fn spawn(&mut self, endpoint: u32, tracked: bool) -> oneshot::Receiver<FirstPush> {
        let (first, first_rx) = oneshot::channel();
        let spec = ProxySpec {
            grpc_addr: self.grpc_addr,
            node: node_for(endpoint, &self.shape),
            tracked,
        };
        let task = run_proxy(
            spec,
            Arc::clone(&self.tracker),
            self.stop.subscribe(),
            first,
        );
        self.tasks.spawn_on(task, &self.runtime);
        first_rx
    }

    /// Starts tracked proxies until `target` run, at most `concurrency`
    /// of them waiting for their first response at a time; returns once
    /// every one has ACKed its first response. Fails on the first proxy
    /// that cannot, or when `deadline` passes.
    pub fn grow_to(&mut self, target: u32, concurrency: usize, deadline: Duration) -> Result<()> {
        let started_at = Instant::now();
        let mut waiting = std::collections::VecDeque::new();
        while self.started < target || !waiting.is_empty() {
            while self.started < target && waiting.len() < concurrency.max(1) {
                waiting.push_back(self.spawn(self.started, true));
                self.started += 1;
            }
            let Some(first) = waiting.pop_front() else {
                break;
            };
            let left = deadline.saturating_sub(started_at.elapsed());
            let outcome = self
                .runtime
                .block_on(async { tokio::time::timeout(left, first).await });
            match outcome {
                Ok(Ok(push)) => self.first_pushes.push(push.elapsed),
                Ok(Err(_)) => {
                    return Err(BenchError::invalid(
                        "simulated proxy",
                        "its task ended before its first response",
                    ));
                }
                Err(_) => {
                    let first_error = self
                        .tracker
                        .first_error
                        .lock()
                        .map(|e| e.clone())
                        .unwrap_or_default()
                        .unwrap_or_else(|| "none".to_owned());
                    return Err(BenchError::invalid(
                        "proxy fleet",
                        format!(
                            "only {} of {target} proxies had their first config after \
                             {deadline:?} ({} stream errors, the first: {first_error})",
                            self.tracker.connected(),
                            self.tracker.stream_errors.load(Ordering::Relaxed),
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// One untracked proxy (WorkloadEntry `endpoint`): the time from
    /// opening its connection to its decoded first response. The proxy is
    /// stopped right after.
    pub fn probe_full_push(&mut self, endpoint: u32, deadline: Duration) -> Result<FirstPush> {
        let (stop, stopped) = watch::channel(false);
        let (first, first_rx) = oneshot::channel();
        let spec = ProxySpec {
            grpc_addr: self.grpc_addr,
            node: node_for(endpoint, &self.shape),
            tracked: false,
        };
        let task = self
            .runtime
            .spawn(run_proxy(spec, Arc::clone(&self.tracker), stopped, first));
        let outcome = self
            .runtime
            .block_on(async { tokio::time::timeout(deadline, first_rx).await });
        let _ = stop.send(true);
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
        match outcome {
            Ok(Ok(push)) => Ok(push),
            Ok(Err(_)) => Err(BenchError::invalid(
                "full-push probe",
                "its task ended before its first response",
            )),
            Err(_) => Err(BenchError::invalid(
                "full-push probe",
                format!("no config after {deadline:?}"),
            )),
        }
    }

    /// Stops every proxy and waits (boundedly) for their tasks.
    pub fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let runtime = self.runtime.clone();
        let _ = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                while self.tasks.join_next().await.is_some() {}
            })
            .await
        });
        self.tasks.abort_all();
    }
}
