//! The workload identity lifecycle: obtain this workload's X.509-SVID from
//! the mesh CA, keep it fresh, and give the data path immutable TLS configs
//! made from it.
//!
//! ```text
//! run(): loop
//!   sign_once: token file ─► fresh P-256 key + CSR (one URI SAN) ─► Certificates.Sign
//!              ─► check (our key, our ID, verifies to the returned bundle)
//!              ─► WorkloadIdentity {server config, client configs on demand}
//!              ─► ArcSwapOption::store            (the data path load_full()s it)
//!   ok:   sleep until 50 % (±10 %) of the remaining lifetime, then again
//!   fail: log, count, keep serving the old identity, retry after 1 s → 30 s
//!         (full jitter; 250 ms → 30 s before the first certificate), at most
//!         a quarter of the old certificate's remaining lifetime apart;
//!         withdraw the old identity once it has expired
//! ```
//!
//! Like config snapshots, an identity is never mutated: a renewal builds a
//! new [`WorkloadIdentity`] and swaps it in whole. Connections keep the
//! configs they were made with; new connections pick up the new one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::csr::WorkloadKey;
use super::sign::{self, IssueError};
use super::{IdentityError, MESH_ALPN, SpiffeId, TrustBundle, TrustDomain};
use crate::config::backoff::Backoff;
use crate::metrics::{IdentityMetrics, InstalledCert};

/// The certificate lifetime a proxy asks for unless told otherwise. The CA
/// may shorten it (knitd caps it at `--max-cert-ttl`).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Renewal happens at this fraction of the lifetime left at issuance...
const RENEW_AT: f64 = 0.5;
/// ...moved by up to ±this much of itself, so proxies started together do
/// not all renew in the same second.
const RENEW_JITTER: f64 = 0.1;
/// Never renew sooner than this after an issuance, whatever lifetime the
/// CA granted, so a CA handing out near-expired certificates cannot make
/// the proxy spin.
const MIN_RENEW_DELAY: Duration = Duration::from_secs(1);
/// Retry delays after a failure: full jitter, doubling from the base to
/// the cap.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(30);
/// The base until the first certificate: a pod is not ready without one,
/// and the usual early refusal is the CA not having loaded the workload's
/// token yet (knitd polls its config every 250 ms), which clears at once.
const FIRST_RETRY_BASE: Duration = Duration::from_millis(250);
/// The shortest retry [`retry_delay`] caps to, so a certificate close to
/// its expiry does not make the proxy hammer the CA.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(250);
/// Client configs kept per identity. One per peer identity a proxy dials
/// (service accounts, not pods), so the bound is only a guard against a
/// config that names unboundedly many.
const MAX_CLIENT_CONFIGS: usize = 1024;

/// What the manager needs to obtain a certificate.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    /// knitd's URL (`http://host:15010`); the control-plane URL by default.
    pub ca_url: String,
    /// For an `https://` CA URL: the root that signs knitd's certificate,
    /// read at every Sign.
    pub ca_root_file: Option<PathBuf>,
    /// The bearer token for the CA, read on every Sign (so a rotated token
    /// file is picked up). `None`: no `authorization` is sent, for a CA
    /// that authenticates callers some other way.
    pub token_file: Option<PathBuf>,
    pub trust_domain: TrustDomain,
    pub namespace: String,
    pub service_account: String,
    /// Lifetime to ask for; the CA may grant less.
    pub requested_ttl: Duration,
}

impl IdentityOptions {
    /// Options with the default lifetime and no token file.
    pub fn new(
        ca_url: impl Into<String>,
        trust_domain: TrustDomain,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> IdentityOptions {
        IdentityOptions {
            ca_url: ca_url.into(),
            ca_root_file: None,
            token_file: None,
            trust_domain,
            namespace: namespace.into(),
            service_account: service_account.into(),
            requested_ttl: DEFAULT_CERT_TTL,
        }
    }

    /// The SPIFFE ID these options ask for.
    pub fn spiffe_id(&self) -> Result<SpiffeId, IssueError> {
        SpiffeId::workload(&self.trust_domain, &self.namespace, &self.service_account).map_err(
            |source| IssueError::BadIdentity {
                namespace: self.namespace.clone(),
                service_account: self.service_account.clone(),
                source,
            },
        )
    }

    /// Checks what can be checked before the first Sign: the identity and
    /// the CA's URL. A proxy refuses to start on these rather than retry
    /// something that can never work.
    pub fn validate(&self) -> Result<SpiffeId, IssueError> {
        sign::ca_endpoint(&self.ca_url, self.ca_root_file.as_deref())?;
        self.spiffe_id()
    }
}

/// One issued identity: the certificate, its key, the bundle it came with,
/// and the rustls configs made from them. Immutable; replaced whole.
pub struct WorkloadIdentity {
    pub id: SpiffeId,
    pub bundle: Arc<TrustBundle>,
    /// For the mesh listener: presents this certificate, requires a client
    /// SVID of the trust domain, selects [`MESH_ALPN`].
    pub server_config: Arc<ServerConfig>,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
    serial: String,
    root_fingerprint: String,
    bundle_not_after: SystemTime,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for WorkloadIdentity {
    // By hand, so the private key can never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("id", &self.id)
            .field("serial", &self.serial)
            .field("root", &self.root_fingerprint)
            .field("not_after", &self.not_after)
            .field("bundle_roots", &self.bundle.roots().len())
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentity {
    /// Client config that accepts only `expected` as the server; cached per
    /// expected ID, so every connection to the same peer identity shares
    /// one config.
    pub fn client_config(&self, expected: &SpiffeId) -> Result<Arc<ClientConfig>, IdentityError> {
        if let Some(config) = self.lock_clients().get(expected) {
            return Ok(Arc::clone(config));
        }
        // Built outside the lock; two racing builders make equal configs
        // and the first one stored wins.
        let config = super::client_config(
            Arc::clone(&self.bundle),
            self.chain.clone(),
            self.key.clone_key(),
            expected.clone(),
            &[MESH_ALPN],
        )?;
        let mut clients = self.lock_clients();
        if clients.len() >= MAX_CLIENT_CONFIGS {
            clients.clear();
        }
        Ok(Arc::clone(
            clients.entry(expected.clone()).or_insert(config),
        ))
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, Arc<ClientConfig>>> {
        // The map is a cache; a panic elsewhere leaves it consistent.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The leaf's serial number, lowercase hex (as knitd logs it).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The fingerprint of the bundle root this certificate chains to
    /// (`sha256:<hex>`, as knitd's `/debug/ca` shows roots).
    pub fn root_fingerprint(&self) -> &str {
        &self.root_fingerprint
    }

    /// The certificate chain presented to peers: leaf first, then
    /// intermediates.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The earliest notAfter among the bundle's roots.
    pub fn bundle_not_after(&self) -> SystemTime {
        self.bundle_not_after
    }

    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// The last failed issuance, for readiness messages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueFailure {
    pub reason: &'static str,
    pub message: String,
    /// Failures in a row since the last success.
    pub consecutive: u32,
}

/// Holds the current identity and renews it; see the module docs.
pub struct IdentityManager {
    opts: IdentityOptions,
    current: ArcSwapOption<WorkloadIdentity>,
    /// Bumped whenever `current` changes (issued, renewed, withdrawn).
    changed: watch::Sender<u64>,
    metrics: Arc<IdentityMetrics>,
    last_failure: Mutex<Option<IssueFailure>>,
}

impl std::fmt::Debug for IdentityManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityManager")
            .field("opts", &self.opts)
            .field("current", &self.current.load_full())
            .finish_non_exhaustive()
    }
}

impl IdentityManager {
    /// A manager with no identity yet; [`IdentityManager::run`] obtains one.
    pub fn new(opts: IdentityOptions) -> Arc<Self> {
        Self::with_metrics(opts, Arc::new(IdentityMetrics::default()))
    }

    /// Like [`IdentityManager::new`], recording issuances, renewals and
    /// failures in `metrics` (the proxy passes its `/metrics` ones).
    pub fn with_metrics(opts: IdentityOptions, metrics: Arc<IdentityMetrics>) -> Arc<Self> {
        Arc::new(IdentityManager {
            opts,
            current: ArcSwapOption::empty(),
            changed: watch::channel(0).0,
            metrics,
            last_failure: Mutex::new(None),
        })
    }

    /// What this manager records for `/metrics`.
    pub fn metrics(&self) -> &Arc<IdentityMetrics> {
        &self.metrics
    }

    /// The identity to use now, if there is one. Lock-free.
    pub fn current(&self) -> Option<Arc<WorkloadIdentity>> {
        self.current.load_full()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.opts.trust_domain
    }

    pub fn options(&self) -> &IdentityOptions {
        &self.opts
    }

    /// Signals "the identity changed"; the value is a generation counter.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The last failure since the last success, if any.
    pub fn last_failure(&self) -> Option<IssueFailure> {
        self.lock_failure().clone()
    }

    fn lock_failure(&self) -> std::sync::MutexGuard<'_, Option<IssueFailure>> {
        self.last_failure.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One issuance: a new key, a CSR, `Certificates.Sign`, the checks, and
    /// on success the new identity installed (and logged). On failure
    /// nothing changes and the error is returned, not logged; [`run`] logs.
    ///
    /// [`run`]: IdentityManager::run
    pub async fn sign_once(&self) -> Result<Arc<WorkloadIdentity>, IssueError> {
        let id = self.opts.spiffe_id()?;
        let bearer = match &self.opts.token_file {
            Some(path) => Some(sign::read_token(path).await?),
            None => None,
        };
        let key = WorkloadKey::generate(&id).map_err(IssueError::Csr)?;
        let response = sign::request(
            &self.opts.ca_url,
            self.opts.ca_root_file.as_deref(),
            &key.csr_pem,
            self.opts.requested_ttl,
            bearer,
        )
        .await?;
        let checked = sign::check_response(&response, &id, &self.opts.trust_domain, &key)?;
        let server_config = super::server_config(
            Arc::clone(&checked.bundle),
            checked.chain.clone(),
            key.key.clone_key(),
            &[MESH_ALPN],
        )
        .map_err(|e| IssueError::Tls(Box::new(e)))?;
        let identity = Arc::new(WorkloadIdentity {
            id,
            bundle: checked.bundle,
            server_config,
            not_after: checked.not_after,
            serial: checked.serial,
            root_fingerprint: checked.root_fingerprint,
            bundle_not_after: checked.bundle_not_after,
            chain: checked.chain,
            key: key.key,
            clients: Mutex::new(HashMap::new()),
        });
        self.install(Arc::clone(&identity));
        Ok(identity)
    }

    /// Swaps `identity` in whole: connections made from now on use its
    /// configs (and its bundle), connections already made keep theirs.
    fn install(&self, identity: Arc<WorkloadIdentity>) {
        info!(
            id = %identity.id,
            serial = %identity.serial,
            not_after = %display_time(identity.not_after),
            root = %identity.root_fingerprint,
            bundle_roots = identity.bundle.roots().len(),
            "workload certificate installed"
        );
        let installed = InstalledCert {
            serial: identity.serial.clone(),
            root_fingerprint: identity.root_fingerprint.clone(),
            bundle_fingerprints: identity.bundle.fingerprints().to_vec(),
        };
        let (not_after, bundle_not_after) = (identity.not_after, identity.bundle_not_after);
        let previous = self.current.swap(Some(identity));
        if let Some(previous) = &previous
            && previous.bundle.fingerprints() != installed.bundle_fingerprints
        {
            info!(
                from = ?previous.bundle.fingerprints(),
                to = ?installed.bundle_fingerprints,
                "trust bundle changed; new handshakes use the new one"
            );
        }
        self.metrics
            .record_installed(installed, not_after, bundle_not_after, previous.is_some());
        *self.lock_failure() = None;
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Withdraws the current identity once it has expired: no peer accepts
    /// it any more, and without it the proxy reports not ready.
    fn withdraw_if_expired(&self, now: SystemTime) {
        let Some(current) = self.current() else {
            return;
        };
        if !current.is_expired_at(now) {
            return;
        }
        // Only if nothing replaced it meanwhile.
        let previous = self.current.compare_and_swap(&Some(current.clone()), None);
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, &current)) {
            error!(
                id = %current.id,
                serial = %current.serial,
                not_after = %display_time(current.not_after),
                "workload certificate expired without a renewal; withdrawn (mesh mTLS is unavailable until a new one is issued)"
            );
            self.changed.send_modify(|generation| *generation += 1);
        }
    }

    fn record_failure(&self, err: &IssueError) {
        self.metrics.record_sign_failure(err.reason());
        let consecutive = {
            let mut last = self.lock_failure();
            let consecutive = last.as_ref().map_or(1, |f| f.consecutive.saturating_add(1));
            *last = Some(IssueFailure {
                reason: err.reason(),
                message: err.to_string(),
                consecutive,
            });
            consecutive
        };
        let serving = match self.current() {
            Some(current) => format!(
                "still serving serial {} until {}",
                current.serial,
                display_time(current.not_after)
            ),
            None => "no certificate yet".to_owned(),
        };
        let code = err.status().map(|s| format!("{:?}", s.code()));
        warn!(
            reason = err.reason(),
            class = ?err.class(),
            grpc_status = code.as_deref().unwrap_or("-"),
            consecutive,
            ca = %self.opts.ca_url,
            "workload certificate not issued: {err}; {serving}"
        );
    }

    /// Runs forever: obtains a certificate, then renews it; see the module
    /// docs for the schedule.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::new(FIRST_RETRY_BASE, RETRY_CAP);
        loop {
            self.withdraw_if_expired(SystemTime::now());
            match self.sign_once().await {
                Ok(identity) => {
                    backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
                    let wait = renew_delay(SystemTime::now(), identity.not_after, fastrand::f64());
                    info!(
                        id = %identity.id,
                        serial = %identity.serial,
                        renew_in_secs = wait.as_secs(),
                        "next renewal scheduled"
                    );
                    sleep_until_wall(SystemTime::now() + wait).await;
                }
                Err(err) => {
                    self.record_failure(&err);
                    let left = self
                        .current()
                        .map(|current| current.not_after.duration_since(SystemTime::now()));
                    let wait = match left {
                        Some(Ok(left)) => retry_delay(backoff.next_delay(), left),
                        // Nothing served, or already expired (withdrawn on
                        // the next turn): the plain backoff.
                        Some(Err(_)) | None => backoff.next_delay(),
                    };
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Sleeps until wall-clock time `t`. Certificates expire by the wall
/// clock, while tokio's timers follow the monotonic one, which stands
/// still while a machine is suspended; waking up at least once a minute
/// to look at the wall clock keeps a renewal from oversleeping an expiry.
async fn sleep_until_wall(t: SystemTime) {
    const CHECK_EVERY: Duration = Duration::from_secs(60);
    while let Ok(left) = t.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(CHECK_EVERY)).await;
    }
}

/// The wait before retrying a failed renewal: the backoff's `delay`, but
/// at most a quarter of the lifetime `left` on the certificate in use (and
/// never past its expiry, to withdraw it on time).
///
/// The cap matters for short-lived certificates: renewal starts at half
/// the lifetime, and an outage of the CA (a restart, say) must not push
/// the backoff past the rest of it; with a quarter, at least a few more
/// attempts happen before the old certificate runs out.
pub fn retry_delay(delay: Duration, left: Duration) -> Duration {
    delay.min((left / 4).max(MIN_RETRY_DELAY)).min(left)
}

/// How long after `now` to renew a certificate that expires at
/// `not_after`: half of the remaining lifetime, ±10 % of that, from
/// `unit_random` in [0, 1).
///
/// The lifetime counts from issuance (`now`), not from the leaf's
/// notBefore: the CA backdates notBefore for clock skew, which would pull
/// renewal of short-lived certificates far too early.
pub fn renew_delay(now: SystemTime, not_after: SystemTime, unit_random: f64) -> Duration {
    let remaining = not_after.duration_since(now).unwrap_or_default();
    let jitter = RENEW_JITTER * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
    remaining
        .mul_f64(RENEW_AT * (1.0 + jitter))
        .max(MIN_RENEW_DELAY)
}

/// A time as RFC 3339 UTC (`2025-01-31T12:00:00Z`), for logs.
pub(crate) fn display_time(t: SystemTime) -> String {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs(),
        Err(_) => return "before 1970".to_owned(),
    };
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a proleptic Gregorian date: shift the epoch
    // to 0000-03-01 so leap days end each 400/100/4-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_logged_as_rfc3339() {
        let at = |secs: u64| display_time(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn retries_stay_within_the_lifetime_left() {
        let secs = Duration::from_secs;
        // A day left: the backoff as it is.
        assert_eq!(retry_delay(secs(30), secs(86_400)), secs(30));
        // 28 s left on a 60 s certificate: at most 7 s between attempts.
        assert_eq!(retry_delay(secs(16), secs(28)), secs(7));
        assert_eq!(retry_delay(secs(2), secs(28)), secs(2));
        // Near the end: the floor, but never past the expiry.
        assert_eq!(
            retry_delay(secs(8), Duration::from_millis(800)),
            Duration::from_millis(250)
        );
        assert_eq!(
            retry_delay(secs(8), Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        assert_eq!(retry_delay(secs(8), Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn renewal_is_at_half_the_remaining_lifetime_with_bounded_jitter() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let day = now + Duration::from_secs(86_400);
        assert_eq!(renew_delay(now, day, 0.5), Duration::from_secs(43_200));
        assert_eq!(renew_delay(now, day, 0.0), Duration::from_secs(38_880));
        let top = renew_delay(now, day, 1.0);
        assert_eq!(top, Duration::from_secs(47_520));
        for _ in 0..1000 {
            let d = renew_delay(now, day, fastrand::f64());
            assert!(d >= Duration::from_secs(38_880) && d <= top, "{d:?}");
        }
        // Short-lived: still half-way, never before the floor.
        let six = now + Duration::from_secs(6);
        assert_eq!(renew_delay(now, six, 0.5), Duration::from_secs(3));
        assert_eq!(renew_delay(now, now, 0.5), MIN_RENEW_DELAY);
        assert_eq!(
            renew_delay(now, now - Duration::from_secs(5), 0.5),
            MIN_RENEW_DELAY
        );
    }
}
