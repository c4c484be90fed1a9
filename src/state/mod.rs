//! The shared state below the handlers: [`State`] (what every connection shares), the
//! reloadable [`Snapshot`] (loaded once per request or tunnel and carried through, so each
//! sees one configuration), the per-connection context ([`conn`]), the serving of one
//! client connection with the proxy's limits ([`serve`]), the connection limits ([`limits`]), task
//! tracking for tunnels ([`tasks`]) and the one [`rescue`] that turns any error into its
//! response and access-log fields.

pub mod conn;
pub mod limits;
pub mod rescue;
pub mod serve;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Policy;
use crate::access::hosts::HostList;
use crate::cache::Cache;
use crate::config::ValidConfig;
use crate::metrics::Metrics;
use crate::mirror::Mirrors;
use crate::mitm::issuer::CertIssuer;
use crate::telemetry::AccessLog;
use crate::telemetry::stats::LiveStats;
use crate::upstream::Upstream;
use conn::ConnCtx;
use limits::ClientSlots;

/// What a configuration reload replaces, swapped as one. A request or tunnel loads it once
/// ([`State::snapshot`]) and carries it through, so it sees one configuration from start to
/// end even when a reload happens meanwhile.
pub struct Snapshot {
    pub policy: Arc<Policy>,
    pub upstream: Upstream,
    /// Hosts whose CONNECTs are intercepted, and the exclusions.
    pub intercept: HostList,
    pub no_intercept: HostList,
}

impl Snapshot {
    fn build(config: &ValidConfig, own: Vec<SocketAddr>) -> Snapshot {
        let policy = Arc::new(Policy::new(&config.access, own));
        let upstream = Upstream::new(&config.upstream, policy.clone());
        Snapshot {
            policy,
            upstream,
            intercept: config.intercept.hosts.clone(),
            no_intercept: config.intercept.exclude.clone(),
        }
    }

    /// Whether a CONNECT to `host` is intercepted.
    pub fn intercepts(&self, host: &str) -> bool {
        self.intercept.matches(host) && !self.no_intercept.matches(host)
    }
}

/// Everything a request handler needs, shared by all connections.
pub struct State {
    /// The configuration the process started with (reloads replace the [`Snapshot`]).
    pub config: ValidConfig,
    snapshot: ArcSwap<Snapshot>,
    pub log: AccessLog,
    /// Connection tasks and tunnels, awaited at shutdown.
    pub tracker: TaskTracker,
    /// Fired when draining starts: listeners stop, idle connections close.
    pub shutdown: CancellationToken,
    /// Fired when the grace period is over: tunnels still open are closed.
    pub hard_stop: CancellationToken,
    pub conn_limit: Arc<Semaphore>,
    /// Open connections per client address (`max-connections-per-client`).
    pub client_slots: Arc<ClientSlots>,
    /// The HTTP cache; `None` when both tiers are off.
    pub cache: Option<Arc<Cache>>,
    /// Bound proxy addresses.
    pub addrs: Vec<SocketAddr>,
    /// Bound proxy and admin addresses: destinations the proxy never connects to.
    pub own_addrs: Vec<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<LiveStats>,
    /// Mints leaf certificates for intercepted hosts (present when interception is on at
    /// start, or a CA was configured).
    pub issuer: Option<Arc<CertIssuer>>,
    /// The registry mirror routes and their figures (not reloadable).
    pub mirrors: Arc<Mirrors>,
}

/// The parts of [`State`] made by the caller (they need the bound addresses, the metrics,
/// the opened cache...).
pub struct Parts {
    pub config: ValidConfig,
    pub log: AccessLog,
    pub cache: Option<Arc<Cache>>,
    pub addrs: Vec<SocketAddr>,
    pub own_addrs: Vec<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<LiveStats>,
    pub issuer: Option<Arc<CertIssuer>>,
}

impl State {
    pub fn new(p: Parts) -> State {
        State {
            snapshot: ArcSwap::from_pointee(Snapshot::build(&p.config, p.own_addrs.clone())),
            mirrors: Arc::new(Mirrors::new(&p.config.mirrors)),
            conn_limit: Arc::new(Semaphore::new(p.config.max_connections)),
            client_slots: ClientSlots::new(p.config.max_connections_per_client),
            config: p.config,
            log: p.log,
            cache: p.cache,
            addrs: p.addrs,
            own_addrs: p.own_addrs,
            metrics: p.metrics,
            stats: p.stats,
            issuer: p.issuer,
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
        }
    }

    /// The current access policy, routes and clients: load it once per request or tunnel.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Applies the reloadable parts of a new configuration: access rules and users, parent
    /// proxies and the direct list, cache rules. Other changes need a restart.
    pub fn reload(&self, new: &ValidConfig) {
        self.snapshot
            .store(Arc::new(Snapshot::build(new, self.own_addrs.clone())));
        if let (Some(cache), Some(settings)) = (&self.cache, &new.cache) {
            cache.set_rules(settings.rules.clone());
        }
    }
}

/// What one request or tunnel carries from start to end: the shared state, the snapshot
/// loaded when it began (a reload meanwhile does not change what it sees), and its
/// connection.
#[derive(Clone)]
pub struct Scope {
    pub state: Arc<State>,
    pub snap: Arc<Snapshot>,
    pub conn: Arc<ConnCtx>,
}

impl Scope {
    /// A scope for a request that starts now on `conn`.
    pub fn begin(state: &Arc<State>, conn: &Arc<ConnCtx>) -> Scope {
        Scope {
            state: state.clone(),
            snap: state.snapshot(),
            conn: conn.clone(),
        }
    }
}
