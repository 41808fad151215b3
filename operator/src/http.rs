//! The operator's HTTP endpoints: `GET /healthz` (the process is alive), `GET /readyz`
//! (it has reached the API server) and `GET /metrics` (Prometheus text).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use warp::Filter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::metrics::Metrics;

fn with_metrics(metrics: Arc<Metrics>) -> impl Filter<Extract = (Arc<Metrics>,), Error = Infallible> + Clone {
    warp::any().map(move || metrics.clone())
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Every route; anything else is a 404.
pub fn routes(metrics: Arc<Metrics>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let healthz = warp::path!("healthz").map(|| text(StatusCode::OK, "ok\n".into(), "text/plain"));
    let readyz = warp::path!("readyz").and(with_metrics(metrics.clone())).map(|metrics: Arc<Metrics>| {
        if metrics.is_ready() {
            text(StatusCode::OK, "ready\n".into(), "text/plain")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "api server not reached yet\n".into(), "text/plain")
        }
    });
    let metrics_route = warp::path!("metrics").and(with_metrics(metrics)).map(|metrics: Arc<Metrics>| {
        text(StatusCode::OK, metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
    });
    warp::get()
        .and(healthz.or(readyz).unify().or(metrics_route).unify())
        .or(warp::any().map(|| text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain")))
        .unify()
}

/// Binds `addr` (so a taken port fails at startup, not later).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the routes until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(metrics)).incoming(listener).graceful(shutdown).run().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn healthz_answers_while_the_process_runs() {
        let res = warp::test::request().path("/healthz").reply(&routes(Arc::default())).await;
        assert_eq!(res.status(), 200);
    }

    #[tokio::test]
    async fn readyz_waits_for_the_api_server() {
        let metrics = Arc::new(Metrics::default());
        let filter = routes(metrics.clone());
        assert_eq!(warp::test::request().path("/readyz").reply(&filter).await.status(), 503);
        metrics.set_ready(true);
        assert_eq!(warp::test::request().path("/readyz").reply(&filter).await.status(), 200);
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_prometheus_text_format() {
        let res = warp::test::request().path("/metrics").reply(&routes(Arc::default())).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        assert!(String::from_utf8_lossy(res.body()).contains("geocache_operator_reconciles_total 0"));
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let res = warp::test::request().path("/nope").reply(&routes(Arc::default())).await;
        assert_eq!(res.status(), 404);
    }
}
