//! The HTTP/JSON API (warp).
//!
//! One filter per concern — [`keys_handlers`], [`status_handlers`],
//! [`health_handlers`], [`metrics_handlers`] — combined by [`http_handlers`]; every
//! error goes through [`ApiError`], the one place that maps error codes to HTTP
//! statuses and the JSON error body `{"error":{"code","message"}}`.

mod auth;
mod error;
mod keys;
mod tls;

use std::convert::Infallible;
use std::sync::Arc;

use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

pub use error::ApiError;
pub use tls::serve_tls;

use crate::state::NodeState;

fn with_state(state: Arc<NodeState>) -> impl Filter<Extract = (Arc<NodeState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Every HTTP route of the node, behind the password check when `--auth-file` is set.
pub fn http_handlers(state: Arc<NodeState>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    auth::gate(state.clone()).or(routes(state)).unify()
}

fn routes(state: Arc<NodeState>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    keys::keys_handlers(state.clone())
        .or(status_handlers(state.clone()))
        .unify()
        .or(health_handlers(state.clone()))
        .unify()
        .or(metrics_handlers(state.clone()))
        .unify()
        .or(warp::any().map(move || {
            state.db.metrics().http_request("other", 404);
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
        }))
        .unify()
}

/// `GET /v1/status`.
pub fn status_handlers(state: Arc<NodeState>) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "status").and(warp::method()).and(with_state(state)).map(
        |method: warp::http::Method, state: Arc<NodeState>| {
            let response = if method == warp::http::Method::GET {
                json_response(StatusCode::OK, &state.status())
            } else {
                ApiError::method_not_allowed(&method).into_response()
            };
            state.db.metrics().http_request("status", response.status().as_u16());
            response
        },
    )
}

/// `GET /healthz` (the process is alive) and `GET /readyz` (it serves traffic).
pub fn health_handlers(state: Arc<NodeState>) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let healthz = warp::path!("healthz").and(with_state(state.clone())).map(|state: Arc<NodeState>| {
        state.db.metrics().http_request("healthz", 200);
        json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
    });
    let readyz = warp::path!("readyz").and(with_state(state)).map(|state: Arc<NodeState>| {
        let (status, body) = if state.is_ready() {
            (StatusCode::OK, serde_json::json!({"status": "ready"}))
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"status": "not ready"}))
        };
        state.db.metrics().http_request("readyz", status.as_u16());
        json_response(status, &body)
    });
    warp::get().and(healthz.or(readyz).unify())
}

/// `GET /metrics` in the Prometheus text format.
pub fn metrics_handlers(state: Arc<NodeState>) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("metrics").and(warp::get()).and(with_state(state)).map(|state: Arc<NodeState>| {
        state.db.metrics().http_request("metrics", 200);
        let mut body = state.db.metrics().render(&state.gauges());
        state.replication.render_metrics(&state, &mut body);
        state.security.render_metrics(&mut body);
        let mut response = Response::new(body.into());
        response.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    })
}

/// A JSON response.
pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(bytes.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(warp::http::header::CONTENT_TYPE, warp::http::HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests;
