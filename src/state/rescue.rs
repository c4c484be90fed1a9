//! The one place an error becomes what the client and the log see: [`rescue`] turns a
//! handler's `ProxyError` into its response (status, `X-Cuttle-Error`, a short body naming the
//! cause, never a credential) and fills the access record's result, status and error fields.

use http::Response;

use super::Scope;
use crate::error::ProxyError;
use crate::http::body::Body;
use crate::telemetry::AccessRecord;
use crate::telemetry::record::ResultCode;

/// The handler's response, or the error's response with its access-log line written.
pub fn rescue(
    scope: &Scope,
    result: Result<Response<Body>, ProxyError>,
    mut rec: AccessRecord,
) -> Response<Body> {
    let e = match result {
        // The handler owns the access-log line from here (written when the body or the
        // tunnel ends).
        Ok(resp) => return resp,
        Err(e) => e,
    };
    record_error(&mut rec, &e);
    if rec.result == ResultCode::TcpDenied {
        tracing::debug!(client = %scope.conn.peer, error = %e, "request refused");
    } else {
        tracing::info!(client = %scope.conn.peer, url = %rec.url, error = %e, "request failed");
    }
    let resp = e.to_response(&scope.snap.policy.realm);
    rec.bytes = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
    scope.state.log.write(&rec);
    resp
}

/// The access-record fields of a failed request or tunnel: status, error label and message,
/// the denial reason, and the result code (`TCP_DENIED` for refusals, `NONE_NONE` for
/// requests that never reached an upstream).
pub fn record_error(rec: &mut AccessRecord, e: &ProxyError) {
    rec.status = e.status().as_u16();
    rec.error = Some(e.label());
    rec.error_message = Some(e.to_string());
    rec.deny_reason = e.deny_reason();
    rec.head_ready();
    if rec.deny_reason.is_some() {
        rec.result = ResultCode::TcpDenied;
    } else if matches!(
        e,
        ProxyError::ClientBadRequest(_) | ProxyError::ClientOriginForm
    ) {
        rec.result = ResultCode::NoneNone;
    }
}
