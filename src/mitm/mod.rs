//! TLS interception for chosen hosts: cuttle's own CA ([`ca`]), per-host leaf certificates
//! minted once and cached ([`issuer`]), and the intercepted CONNECT whose inner requests
//! re-enter `forward::handle` like plain HTTP, so caching, coalescing, serve-stale, logging
//! and metrics are shared ([`intercept`]). Also the client TLS configuration used to reach
//! HTTPS origins ([`upstream_tls`]).

pub mod ca;
pub mod intercept;
pub mod issuer;
pub mod upstream_tls;

/// Whether `new`'s intercept list can be applied by a reload to a proxy whose interception
/// CA (`issuer`, set up at start) stays: a reload cannot turn interception on, and hosts
/// outside the running CA's name constraints would get certificates clients reject.
pub fn reload_problems(
    issuer: Option<&issuer::CertIssuer>,
    new: &crate::config::ValidConfig,
) -> Result<(), Vec<String>> {
    if new.intercept.is_empty() {
        return Ok(());
    }
    let Some(issuer) = issuer else {
        return Err(vec![
            "intercept: interception was off when cuttle started (no CA); restart cuttle to \
             turn it on"
                .into(),
        ]);
    };
    let outside = issuer.ca().outside_constraints(&new.intercept_patterns);
    if outside.is_empty() {
        return Ok(());
    }
    Err(vec![format!(
        "intercept: {} outside the name constraints of the running CA (clients would reject \
         its certificates); restart cuttle (an ephemeral CA is made for the new list) or give \
         it a CA made for the list (`cuttle ca init --intercept ...`)",
        outside.join(", ")
    )])
}
