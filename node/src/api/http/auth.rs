//! The password check of the HTTP API (`--auth-file`): every request but `/healthz`,
//! `/readyz` (and `/metrics` without `--metrics-auth`) needs
//! `Authorization: Bearer <password>`; without it, or with a wrong one, the answer is
//! 401 `unauthorized` with `WWW-Authenticate: Bearer` and nothing else.
//!
//! `X-Geocache-Authorization: Bearer <password>` is accepted too, when there is no
//! `Authorization` header: for callers behind a proxy that consumes `Authorization`
//! itself, such as the Kubernetes API server's pod proxy the operator reads
//! `/v1/status` through.

use std::sync::Arc;

use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::{ApiError, with_state};
use crate::security::{ClientAuth, Interface, auth::bearer};
use crate::state::NodeState;

/// Answers 401 to a request that needs a password and lacks a good one; rejects (so
/// that the routes run) every other request. It never rejects a request it should
/// have refused: the check fails closed.
pub(super) fn gate(state: Arc<NodeState>) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path::full().and(warp::header::headers_cloned()).and(with_state(state)).and_then(
        |path: warp::path::FullPath, headers: HeaderMap, state: Arc<NodeState>| async move {
            match &state.security.auth {
                Some(auth) => match refusal(auth, path.as_str(), &headers) {
                    Some(response) => {
                        state.db.metrics().http_request("other", response.status().as_u16());
                        Ok(response)
                    }
                    None => Err(warp::reject::reject()),
                },
                None => Err(warp::reject::reject()),
            }
        },
    )
}

/// The header that carries the password when `Authorization` cannot.
pub const ALTERNATE_HEADER: &str = "x-geocache-authorization";

/// Whether `path` is open without a password.
fn is_open(path: &str, auth: &ClientAuth) -> bool {
    let path = path.trim_end_matches('/');
    path == "/healthz" || path == "/readyz" || (path == "/metrics" && !auth.protect_metrics)
}

/// The 401 answer for this request, or `None` when it may go on.
fn refusal(auth: &ClientAuth, path: &str, headers: &HeaderMap) -> Option<Response> {
    if is_open(path, auth) {
        return None;
    }
    let mut given: Vec<&HeaderValue> = headers.get_all(header::AUTHORIZATION).iter().collect();
    if given.is_empty() {
        given = headers.get_all(ALTERNATE_HEADER).iter().collect();
    }
    let (message, challenge) = match given.as_slice() {
        [] => (
            "this request needs an Authorization: Bearer <password> header",
            HeaderValue::from_static("Bearer realm=\"geocache\""),
        ),
        [one] => match bearer(one.as_bytes()) {
            Some(password) if auth.verify(password, Interface::Http) => return None,
            Some(_) => (
                "the password is not accepted",
                HeaderValue::from_static("Bearer realm=\"geocache\", error=\"invalid_token\""),
            ),
            None => {
                auth.refused(Interface::Http);
                (
                    "the Authorization header must be Bearer <password>",
                    HeaderValue::from_static("Bearer realm=\"geocache\", error=\"invalid_request\""),
                )
            }
        },
        _ => {
            auth.refused(Interface::Http);
            (
                "only one Authorization header is allowed",
                HeaderValue::from_static("Bearer realm=\"geocache\", error=\"invalid_request\""),
            )
        }
    };
    if given.is_empty() {
        auth.refused(Interface::Http);
    }
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    Some(response)
}
