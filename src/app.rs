//! Wiring: builds the shared [`State`] from a [`ValidConfig`], binds the listeners, and owns
//! graceful shutdown (stop accepting, let in-flight requests and tunnels finish within the
//! grace period, then stop what is left).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Policy;
use crate::cache::Cache;
use crate::config::ValidConfig;
use crate::forward::client::Clients;
use crate::server::listener;
use crate::telemetry::AccessLog;
use crate::upstream::Upstream;

/// Everything a request handler needs, shared by all connections.
pub struct State {
    pub config: ValidConfig,
    pub policy: Arc<Policy>,
    pub upstream: Upstream,
    pub clients: Clients,
    pub log: AccessLog,
    /// Connection tasks and tunnels, awaited at shutdown.
    pub tracker: TaskTracker,
    /// Fired when draining starts: listeners stop, idle connections close.
    pub shutdown: CancellationToken,
    /// Fired when the grace period is over: tunnels still open are closed.
    pub hard_stop: CancellationToken,
    pub conn_limit: Arc<Semaphore>,
    /// The HTTP cache; `None` when both tiers are off.
    pub cache: Option<Arc<Cache>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct StartError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// A running proxy.
pub struct Proxy {
    state: Arc<State>,
    addrs: Vec<SocketAddr>,
    listeners: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Binds every listen address and starts serving.
    pub async fn start(config: ValidConfig, log: AccessLog) -> Result<Proxy, StartError> {
        let mut bound = Vec::new();
        for addr in &config.listen {
            let l = listener::bind(*addr).map_err(|source| StartError {
                addr: *addr,
                source,
            })?;
            let local = l.local_addr().map_err(|source| StartError {
                addr: *addr,
                source,
            })?;
            bound.push((l, local));
        }
        let addrs: Vec<SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
        let policy = Arc::new(Policy::new(&config, addrs.clone()));
        let upstream = Upstream::new(&config);
        let clients = Clients::new(&config, policy.clone(), upstream.peers());
        let cache = match &config.cache {
            Some(settings) => Some(Cache::open(settings.clone()).await),
            None => None,
        };
        let state = Arc::new(State {
            cache,
            conn_limit: Arc::new(Semaphore::new(config.max_connections)),
            config,
            policy,
            upstream,
            clients,
            log,
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
        });
        let listeners = bound
            .into_iter()
            .map(|(l, _)| tokio::spawn(listener::serve(l, state.clone())))
            .collect();
        Ok(Proxy {
            state,
            addrs,
            listeners,
        })
    }

    /// The bound proxy addresses (ports resolved when 0 was asked for).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Stops accepting, drains for the grace period, then closes what is left.
    pub async fn shutdown(self) {
        let grace = self.state.config.timeouts.shutdown_grace;
        self.state.shutdown.cancel();
        for l in self.listeners {
            let _ = l.await;
        }
        self.state.tracker.close();
        if tokio::time::timeout(grace, self.state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.state.tracker.len(),
                "grace period over; closing remaining connections and tunnels"
            );
            self.state.hard_stop.cancel();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), self.state.tracker.wait())
                    .await;
        }
    }
}

/// Runs until SIGTERM or SIGINT, then drains and returns.
pub async fn run(config: ValidConfig) -> Result<(), StartError> {
    let log = AccessLog::stdout(config.log_format);
    let proxy = Proxy::start(config, log).await?;
    for a in proxy.addrs() {
        tracing::info!(addr = %a, "cuttle listening");
    }
    if let Some(peers) = Some(proxy.state.upstream.peers()).filter(|p| !p.is_empty()) {
        let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
        tracing::info!(parents = ?names, "forwarding through parent proxies");
    }
    wait_for_signal().await;
    tracing::info!(
        grace = ?proxy.state.config.timeouts.shutdown_grace,
        "shutting down: draining connections"
    );
    proxy.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
