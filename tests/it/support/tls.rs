//! An HTTPS origin on 127.0.0.1:0 with its own test CA (the proxy trusts it through
//! `upstream_ca`), for interception tests.
#![allow(dead_code, clippy::disallowed_types)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cuttle::http::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TlsOrigin {
    pub addr: SocketAddr,
    /// PEM file of the origin's test CA (give it to the proxy as `upstream_ca`).
    pub ca_file: PathBuf,
    hits: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl TlsOrigin {
    /// Serves `handler` over TLS with a certificate for `localhost` and 127.0.0.1.
    pub async fn start<F, Fut>(handler: F) -> TlsOrigin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Self::start_on("127.0.0.1:0", handler).await
    }

    /// Like [`TlsOrigin::start`], on a chosen address.
    pub async fn start_on<F, Fut>(bind: &str, handler: F) -> TlsOrigin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test origin CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("origin-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone()], key)
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("cannot bind {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let h2 = hits.clone();
        // Connections are tasks of a JoinSet owned by the accept loop: dropping the origin
        // aborts the loop, which drops the set and closes every open connection too (a
        // stopped origin must not keep answering on a proxy's pooled keep-alive connection).
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let (acceptor, handler, hits) = (acceptor.clone(), handler.clone(), h2.clone());
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, std::convert::Infallible>(fut.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsOrigin {
            addr,
            ca_file,
            hits,
            _dir: dir,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// `https://localhost:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options for a test proxy (`super::opts`) that intercepts `localhost` and trusts
/// `origin`'s CA on the way out.
pub fn intercepting(origin: &TlsOrigin) -> cuttle::config::Options {
    let mut o = super::opts();
    o.intercept = Some(vec!["localhost".into()]);
    o.upstream_ca = Some(origin.ca_file.clone());
    o
}
