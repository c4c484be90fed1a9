//! Wiring: builds the shared [`State`] from a [`ValidConfig`], binds the listeners and the
//! admin port, and owns graceful shutdown (stop accepting, let in-flight requests and tunnels
//! finish within the grace period, then stop what is left). Nothing else lives here.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::cache::Cache;
use crate::config::ValidConfig;
use crate::config::reload::Reloader;
use crate::metrics::Metrics;
use crate::mitm::ca::Ca;
use crate::mitm::issuer::CertIssuer;
use crate::server::listener;
use crate::state::{Parts, State};
use crate::telemetry::AccessLog;
use crate::telemetry::stats::LiveStats;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("interception CA: {0}")]
    Tls(String),
}

/// A running proxy.
pub struct Proxy {
    state: Arc<State>,
    addrs: Vec<SocketAddr>,
    /// The bound `--tls-listen` addresses.
    tls_addrs: Vec<SocketAddr>,
    listeners: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    admin: Arc<Admin>,
    admin_addr: Option<SocketAddr>,
    admin_stop: CancellationToken,
}

impl Proxy {
    /// Binds every listen address and the admin port, and starts serving. `reloader`
    /// re-reads the configuration on SIGHUP or `POST /api/reload`.
    pub async fn start(
        config: ValidConfig,
        log: AccessLog,
        reloader: Option<Reloader>,
    ) -> Result<Proxy, StartError> {
        let mut bound = Vec::new();
        for addr in &config.listen {
            let l = listener::bind(*addr).map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?;
            let local = l.local_addr().map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?;
            bound.push((l, local));
        }
        let addrs: Vec<SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
        let mut tls_bound = Vec::new();
        for addr in &config.tls_listen {
            let l = listener::bind(*addr).map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?;
            let local = l.local_addr().map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?;
            tls_bound.push((l, local));
        }
        let tls_addrs: Vec<SocketAddr> = tls_bound.iter().map(|(_, a)| *a).collect();
        let admin_listener = match config.admin_listen {
            Some(a) => {
                let l =
                    listener::bind(a).map_err(|source| StartError::Listen { addr: a, source })?;
                let local = l
                    .local_addr()
                    .map_err(|source| StartError::Listen { addr: a, source })?;
                Some((l, local))
            }
            None => None,
        };
        let own_addrs: Vec<SocketAddr> = addrs
            .iter()
            .chain(&tls_addrs)
            .copied()
            .chain(admin_listener.as_ref().map(|(_, a)| *a))
            .collect();
        let metrics = Arc::new(Metrics::new());
        let issuer = match (&config.intercept.ca, !config.intercept.is_on()) {
            (None, true) => None,
            (ca, _) => {
                let ca = match ca {
                    Some(ca) => ca.clone(),
                    None => {
                        let ca = Ca::generate(&config.intercept.patterns, 365)
                            .map_err(StartError::Tls)?;
                        tracing::warn!(
                            "no --ca-cert/--ca-key: generated an ephemeral interception CA for this run; \
                             clients must trust it (GET /ca.pem on the admin port)"
                        );
                        Arc::new(ca)
                    }
                };
                Some(Arc::new(
                    CertIssuer::new(ca, metrics.certificates_minted.clone())
                        .map_err(StartError::Tls)?,
                ))
            }
        };
        let stats = Arc::new(LiveStats::default());
        let (m, st) = (metrics.clone(), stats.clone());
        let log = log.with_observer(Arc::new(move |rec| {
            m.observe(rec);
            st.observe(rec);
        }));
        let cache = match &config.cache {
            Some(settings) => Some(Cache::open(settings.clone()).await),
            None => None,
        };
        let state = Arc::new(State::new(Parts {
            config,
            log,
            cache,
            addrs: addrs.clone(),
            own_addrs,
            metrics,
            stats,
            issuer,
        }));
        let acceptor = state
            .config
            .tls_server
            .clone()
            .map(tokio_rustls::TlsAcceptor::from);
        let listeners = bound
            .into_iter()
            .map(|(l, _)| tokio::spawn(listener::serve(l, state.clone())))
            .chain(tls_bound.into_iter().map(|(l, _)| {
                tokio::spawn(listener::serve_with(l, state.clone(), acceptor.clone()))
            }))
            .collect();
        let admin = Admin::new(
            state.clone(),
            state
                .config
                .admin_token
                .as_ref()
                .map(|t| t.expose().to_string()),
            reloader,
        );
        let admin_stop = CancellationToken::new();
        let admin_addr = admin_listener.map(|(l, a)| {
            tokio::spawn(crate::admin::serve(l, admin.clone(), admin_stop.clone()));
            a
        });
        Ok(Proxy {
            state,
            addrs,
            tls_addrs,
            listeners: parking_lot::Mutex::new(listeners),
            admin,
            admin_addr,
            admin_stop,
        })
    }

    /// The bound proxy addresses (ports resolved when 0 was asked for).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound TLS listener addresses (`--tls-listen`).
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The bound admin address, when the admin port is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Re-reads and applies the configuration (as SIGHUP does).
    pub fn reload(&self) -> Result<(), Vec<String>> {
        self.admin.reload()
    }

    /// Stops accepting, drains for the grace period, then closes what is left.
    pub async fn shutdown(self) {
        self.drain().await;
    }

    /// [`Proxy::shutdown`] through a shared reference.
    pub async fn drain(&self) {
        let grace = self.state.config.timeouts.shutdown_grace;
        self.state.shutdown.cancel();
        let listeners = std::mem::take(&mut *self.listeners.lock());
        for l in listeners {
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
        self.admin_stop.cancel();
    }
}

/// Runs until SIGTERM or SIGINT, then drains and returns. SIGHUP reloads.
pub async fn run(config: ValidConfig, reloader: Option<Reloader>) -> Result<(), StartError> {
    // Registered before anything listens: a SIGTERM sent as soon as /readyz answers 200 must
    // drain the proxy, not kill it with the default action.
    let stop = shutdown_signal();
    let log = AccessLog::stdout(config.log_format);
    let proxy = Arc::new(Proxy::start(config, log.clone(), reloader).await?);
    // Registered before the listening line is logged: a SIGHUP sent as soon as the proxy
    // announces itself must reload it, not kill it.
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let p = proxy.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = p.reload();
            }
        });
    }
    for a in proxy.addrs() {
        tracing::info!(addr = %a, "cuttle listening");
    }
    if let Some(a) = proxy.admin_addr() {
        tracing::info!(admin = %a, "admin port (health, metrics, status page)");
    }
    let snapshot = proxy.state.snapshot();
    if !snapshot.upstream.peers().is_empty() {
        let names: Vec<&str> = snapshot
            .upstream
            .peers()
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        tracing::info!(parents = ?names, "forwarding through parent proxies");
    }
    stop.await;
    tracing::info!(
        grace = ?proxy.state.config.timeouts.shutdown_grace,
        "shutting down: draining connections"
    );
    proxy.drain().await;
    log.flush();
    tracing::info!("stopped");
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future ends at the first signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let streams = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move { wait_for_signal(streams).await }
}

async fn wait_for_signal(
    streams: (
        std::io::Result<tokio::signal::unix::Signal>,
        std::io::Result<tokio::signal::unix::Signal>,
    ),
) {
    match streams {
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
