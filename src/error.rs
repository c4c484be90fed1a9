//! `ProxyError`: every failure a request can meet, named by where it happened (client side,
//! access policy, upstream, parent), and the one place that maps it to a status code, a
//! bounded Squid-style label (`ERR_DNS_FAIL`...) and a short response body.

use std::fmt;

use http::{HeaderValue, Response, StatusCode, header};

use crate::http::body::{Body, full};

/// Name of the peer or origin an error concerns, for messages (never carries credentials).
pub type HostName = String;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    // ---- client side -------------------------------------------------------------------
    #[error("invalid request: {0}")]
    ClientBadRequest(String),
    #[error(
        "this is a forward proxy: send absolute-form requests (GET http://host/path) or CONNECT \
         host:port; set HTTP_PROXY/HTTPS_PROXY to this address instead of requesting it directly"
    )]
    ClientOriginForm,
    #[error("proxy authentication required")]
    ClientAuthRequired,
    #[error("too many failed logins from this address; retry in {retry_after}s")]
    ClientAuthThrottled { retry_after: u64 },
    #[error("not in cache, and the request said only-if-cached")]
    NotCached,
    #[error(
        "mirror {mirror} serves GET and HEAD only (set allow-write = true on the mirror to pass \
         writes such as publishing through)"
    )]
    MirrorMethod { mirror: String },
    #[error("authentication required (the user and password cuttle's clients have)")]
    MirrorAuthRequired,

    // ---- access policy ------------------------------------------------------------------
    #[error("access denied: {rule}")]
    Denied {
        /// Bounded reason for metrics: client_network, connect_port, deny_domain,
        /// allow_domain, deny_dest, loop.
        reason: &'static str,
        rule: String,
    },

    // ---- upstream (origin, direct path) -------------------------------------------------
    #[error("cannot resolve host {host}: {cause}")]
    UpstreamDns { host: HostName, cause: String },
    #[error("cannot connect to {host}: {cause}")]
    UpstreamConnect { host: HostName, cause: String },
    #[error("connection to {host} timed out after {secs}s")]
    UpstreamConnectTimeout { host: HostName, secs: u64 },
    #[error("{host} sent no response within {secs}s")]
    UpstreamReadTimeout { host: HostName, secs: u64 },
    #[error("error talking to {host}: {cause}")]
    UpstreamProtocol { host: HostName, cause: String },
    #[error("TLS with {host} failed: {cause}")]
    UpstreamTls { host: HostName, cause: String },

    // ---- parent proxy -------------------------------------------------------------------
    #[error(
        "parent proxy {peer} rejected cuttle's credentials (407); check the user and password \
         in CACHE_PEER"
    )]
    ParentAuthRejected { peer: HostName },
    #[error("parent proxy {peer} did not accept cuttle's authentication: {reason}")]
    ParentAuthFailed { peer: HostName, reason: String },
    #[error("parent proxy {peer} refused the tunnel to {host}: {status}")]
    ParentRefused {
        peer: HostName,
        host: HostName,
        status: u16,
    },
    #[error("parent proxy {peer} sent an invalid response: {cause}")]
    ParentProtocol { peer: HostName, cause: String },
    #[error("parent proxy {peer} timed out during the CONNECT handshake after {secs}s")]
    ParentHandshakeTimeout { peer: HostName, secs: u64 },
}

impl ProxyError {
    /// The HTTP status the client receives for this error.
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            ClientBadRequest(_) | ClientOriginForm => StatusCode::BAD_REQUEST,
            MirrorMethod { .. } => StatusCode::METHOD_NOT_ALLOWED,
            MirrorAuthRequired => StatusCode::UNAUTHORIZED,
            ClientAuthRequired => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ClientAuthThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Denied { .. } => StatusCode::FORBIDDEN,
            UpstreamConnectTimeout { .. }
            | NotCached
            | UpstreamReadTimeout { .. }
            | ParentHandshakeTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamDns { .. }
            | UpstreamTls { .. }
            | UpstreamConnect { .. }
            | UpstreamProtocol { .. }
            | ParentAuthRejected { .. }
            | ParentAuthFailed { .. }
            | ParentRefused { .. }
            | ParentProtocol { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// A bounded label in Squid's spirit, for the error page, logs and metrics.
    /// The bounded reason of a refusal (an access rule, or client authentication), for the
    /// log and the metrics; `None` for every error that is not a refusal.
    pub fn deny_reason(&self) -> Option<&'static str> {
        match self {
            ProxyError::Denied { reason, .. } => Some(reason),
            ProxyError::ClientAuthRequired
            | ProxyError::ClientAuthThrottled { .. }
            | ProxyError::MirrorAuthRequired => Some("auth"),
            _ => None,
        }
    }

    pub fn label(&self) -> &'static str {
        use ProxyError::*;
        match self {
            ClientBadRequest(_) => "ERR_INVALID_REQ",
            ClientOriginForm => "ERR_INVALID_URL",
            ClientAuthRequired | ClientAuthThrottled { .. } | MirrorAuthRequired => {
                "ERR_CACHE_ACCESS_DENIED"
            }
            NotCached => "ERR_ONLY_IF_CACHED_MISS",
            MirrorMethod { .. } => "ERR_UNSUP_REQ",
            Denied { .. } => "ERR_ACCESS_DENIED",
            UpstreamDns { .. } => "ERR_DNS_FAIL",
            UpstreamConnect { .. } | UpstreamConnectTimeout { .. } => "ERR_CONNECT_FAIL",
            UpstreamReadTimeout { .. } => "ERR_READ_TIMEOUT",
            UpstreamProtocol { .. } => "ERR_READ_ERROR",
            UpstreamTls { .. } => "ERR_SECURE_CONNECT_FAIL",
            ParentAuthRejected { .. } | ParentAuthFailed { .. } => "ERR_PARENT_AUTH",
            ParentRefused { .. } | ParentProtocol { .. } | ParentHandshakeTimeout { .. } => {
                "ERR_PARENT_FAIL"
            }
        }
    }

    /// Whether trying the next parent peer may help (the peer itself is unreachable).
    pub fn is_peer_unreachable(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamDns { .. }
                | ProxyError::UpstreamConnect { .. }
                | ProxyError::UpstreamConnectTimeout { .. }
        )
    }

    /// The synthetic response sent to the client.
    pub fn to_response(&self, realm: &str) -> Response<Body> {
        let body = format!("{}: {}\n", self.label(), self);
        let mut resp = Response::new(full(body));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("x-cuttle-error", HeaderValue::from_static(self.label()));
        if matches!(self, ProxyError::ClientAuthRequired) {
            let challenge = format!("Basic realm=\"{}\"", realm.replace('"', "'"));
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                h.insert(header::PROXY_AUTHENTICATE, v);
            }
        }
        if matches!(self, ProxyError::MirrorAuthRequired) {
            let challenge = format!("Basic realm=\"{}\"", realm.replace('"', "'"));
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if matches!(self, ProxyError::MirrorMethod { .. }) {
            h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        if let ProxyError::ClientAuthThrottled { retry_after } = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if matches!(
            self,
            ProxyError::ClientBadRequest(_) | ProxyError::ClientOriginForm
        ) {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Finds a `ProxyError` anywhere in an error's source chain (hyper-util wraps connector errors).
pub fn find_in_chain<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ProxyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<ProxyError>() {
            return Some(p);
        }
        cur = e.source();
    }
    None
}

/// Renders an error chain on one line ("a: b: c") for causes and diagnostics.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    struct Chain<'a>(&'a (dyn std::error::Error + 'static));
    impl fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0)?;
            let mut cur = self.0.source();
            while let Some(e) = cur {
                write!(f, ": {e}")?;
                cur = e.source();
            }
            Ok(())
        }
    }
    Chain(err).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_labels() {
        let e = ProxyError::UpstreamDns {
            host: "x.invalid".into(),
            cause: "no such host".into(),
        };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.label(), "ERR_DNS_FAIL");
        let e = ProxyError::UpstreamReadTimeout {
            host: "h".into(),
            secs: 3,
        };
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.label(), "ERR_READ_TIMEOUT");
    }

    #[test]
    fn auth_required_carries_challenge() {
        let r = ProxyError::ClientAuthRequired.to_response("cuttle");
        assert_eq!(r.status(), 407);
        assert_eq!(
            r.headers()[header::PROXY_AUTHENTICATE],
            "Basic realm=\"cuttle\""
        );
    }

    #[test]
    fn finds_error_in_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] ProxyError);
        let o = Outer(ProxyError::ClientAuthRequired);
        assert!(matches!(
            find_in_chain(&o),
            Some(ProxyError::ClientAuthRequired)
        ));
    }
}
