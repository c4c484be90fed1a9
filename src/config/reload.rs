//! Reloading: re-reads the configuration (file, environment, secret files) on SIGHUP or
//! `POST /api/reload`, and checks what a running proxy cannot change. Applying the result is
//! the caller's (`State::reload`); a rejected configuration leaves the running one in place.

use std::sync::Arc;

use super::ValidConfig;
use crate::mitm::issuer::CertIssuer;

/// Re-reads and validates the configuration from where it came from.
pub type Source = Arc<dyn Fn() -> Result<ValidConfig, Vec<String>> + Send + Sync>;

/// Where a reload reads from, and what it checks.
#[derive(Clone)]
pub struct Reloader {
    source: Source,
}

impl Reloader {
    pub fn new(source: Source) -> Reloader {
        Reloader { source }
    }

    /// The new configuration, when it is valid and applicable to a proxy running with
    /// `issuer` (the interception CA made at start).
    pub fn load(&self, issuer: Option<&CertIssuer>) -> Result<ValidConfig, Vec<String>> {
        let cfg = (self.source)()?;
        interception_problems(issuer, &cfg)?;
        Ok(cfg)
    }
}

/// Whether `new`'s intercept list can be applied by a reload to a proxy whose interception
/// CA (`issuer`, set up at start) stays: a reload cannot turn interception on, and hosts
/// outside the running CA's name constraints would get certificates clients reject.
fn interception_problems(
    issuer: Option<&CertIssuer>,
    new: &ValidConfig,
) -> Result<(), Vec<String>> {
    if !new.intercept.is_on() {
        return Ok(());
    }
    let Some(issuer) = issuer else {
        return Err(vec![
            "intercept: interception was off when cuttle started (no CA); restart cuttle to \
             turn it on"
                .into(),
        ]);
    };
    let outside = issuer.ca().outside_constraints(&new.intercept.patterns);
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
