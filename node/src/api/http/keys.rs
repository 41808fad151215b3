//! `/v1/keys/{key}` and `/v1/keys/{key}/expire`.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;

use super::{ApiError, json_response, with_state};
use crate::clock;
use crate::db::{DbError, Expiry, PutOutcome, Written};
use crate::duration::{parse_ttl_ms, rfc3339_ms};
use crate::state::NodeState;
use crate::store::{Decision, Value, Version, merge_patch};

/// Body of a successful write.
#[derive(Debug, Serialize)]
struct WriteBody<'a> {
    key: &'a str,
    version: String,
    expires_at: Option<String>,
    /// Read-your-writes token: pass it as `X-Geocache-After` to a read in any region.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

use crate::replication::{AckLevel as Ack, Token};

/// The decoded query string.
#[derive(Debug, Default)]
struct Query {
    ttl: Option<String>,
    ack: Option<String>,
}

fn parse_query(raw: &str) -> Result<Query, ApiError> {
    let mut q = Query::default();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(&value.replace('+', " "))
            .decode_utf8()
            .map_err(|_| ApiError::bad_request("invalid_query", "query string is not valid utf-8"))?
            .into_owned();
        match name {
            "ttl" => q.ttl = Some(value),
            "ack" => q.ack = Some(value),
            _ => {}
        }
    }
    Ok(q)
}

fn parse_ack(q: &Query) -> Result<Ack, ApiError> {
    match q.ack.as_deref() {
        None | Some("local") => Ok(Ack::Local),
        Some("region") => Ok(Ack::Region),
        Some("global") => Ok(Ack::Global),
        Some(other) => {
            Err(ApiError::bad_request("invalid_ack", format!("ack {other:?} is not one of local, region, global")))
        }
    }
}

/// The TTL of a write: `?ttl=` or the `X-Geocache-Ttl` header.
fn write_ttl(q: &Query, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let raw = match (&q.ttl, headers.get("x-geocache-ttl")) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(h)) => Some(
            h.to_str()
                .map_err(|_| ApiError::bad_request("invalid_ttl", "X-Geocache-Ttl is not valid text"))?
                .to_string(),
        ),
        (None, None) => None,
    };
    let Some(raw) = raw else { return Ok(None) };
    let ms = parse_ttl_ms(&raw).map_err(|m| ApiError::from(DbError::InvalidTtl(m)))?;
    if ms == 0 {
        return Err(ApiError::from(DbError::InvalidTtl("ttl of a write must be greater than 0".into())));
    }
    Ok(Some(ms))
}

/// The media type of a request, lowercased and without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

fn require_media_type(headers: &HeaderMap, accepted: &[&str], absent_ok: bool) -> Result<(), ApiError> {
    match media_type(headers) {
        None if absent_ok => Ok(()),
        Some(t) if accepted.contains(&t.as_str()) => Ok(()),
        got => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type {} is not accepted here; use {}",
                got.as_deref().unwrap_or("(none)"),
                accepted.join(" or ")
            ),
        )),
    }
}

/// Reads a body of at most `limit` bytes without buffering more than that.
async fn read_body<S, B>(body: S, limit: usize) -> Result<bytes::Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::bad_request("invalid_body", format!("cannot read body: {e}")))?;
        if out.len() + chunk.remaining() > limit {
            return Err(ApiError::from(DbError::ValueTooLarge { len: out.len() + chunk.remaining(), max: limit }));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            out.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

/// Renders a version as `<hlc in hex>-<origin node id>`.
pub(crate) fn version_string(state: &NodeState, v: Version) -> String {
    let node =
        state.db.store().origins().get(v.origin).map(|o| o.node_id.to_string()).unwrap_or_else(|| "unknown".into());
    format!("{:016x}-{}", v.hlc, node)
}

/// The key in the path: exactly one percent-encoded segment.
fn decode_key(segment: &str) -> Result<String, ApiError> {
    let key = percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("invalid_key", "key is not valid utf-8"))?;
    Ok(key.into_owned())
}

/// `/v1/keys/...`: every method on keys.
pub fn keys_handlers(state: Arc<NodeState>) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::path!("v1" / "keys" / ..)
        .and(warp::path::tail())
        .and(warp::method())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_state(state))
        .then(
            |tail: warp::path::Tail, method: Method, query: String, headers: HeaderMap, body, state: Arc<NodeState>| async move {
                let (route, result) = route(&state, tail.as_str(), &method, &query, &headers, body).await;
                let response = result.unwrap_or_else(ApiError::into_response);
                state.db.metrics().http_request(route, response.status().as_u16());
                response
            },
        )
}

async fn route<S, B>(
    state: &NodeState,
    tail: &str,
    method: &Method,
    raw_query: &str,
    headers: &HeaderMap,
    body: S,
) -> (&'static str, Result<Response, ApiError>)
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let segments: Vec<&str> = tail.split('/').collect();
    let (route, key_segment) = match segments.as_slice() {
        [key] => ("keys", *key),
        [key, "expire"] => ("expire", *key),
        [_, ..] => {
            let e = ApiError::bad_request("invalid_key", "a key is one path segment; encode '/' in keys as %2F");
            return ("keys", Err(e));
        }
        [] => ("keys", ""),
    };
    let result = async {
        let key = decode_key(key_segment)?;
        state.db.check_key(&key)?;
        let query = parse_query(raw_query)?;
        match (route, method.clone()) {
            ("keys", Method::GET) | ("keys", Method::HEAD) => {
                wait_for_after(state, headers).await?;
                get(state, &key)
            }
            ("keys", Method::PUT) => {
                require_media_type(headers, &["application/json"], true)?;
                let ack = parse_ack(&query)?;
                let ttl = write_ttl(&query, headers)?;
                let body = read_body(body, state.db.limits().max_value_bytes).await?;
                put(state, &key, body, ttl, ack).await
            }
            ("keys", Method::PATCH) => {
                require_media_type(headers, &["application/merge-patch+json"], false)?;
                let ack = parse_ack(&query)?;
                let ttl = write_ttl(&query, headers)?;
                let body = read_body(body, state.db.limits().max_value_bytes).await?;
                patch(state, &key, body, ttl, ack).await
            }
            ("keys", Method::DELETE) => {
                let ack = parse_ack(&query)?;
                delete(state, &key, ack).await
            }
            ("expire", Method::POST) => {
                let ack = parse_ack(&query)?;
                expire(state, &key, query.ttl.as_deref(), ack).await
            }
            (_, m) => Err(ApiError::method_not_allowed(&m)),
        }
    }
    .await;
    (route, result)
}

fn get(state: &NodeState, key: &str) -> Result<Response, ApiError> {
    let found = state.db.read(key, |current| {
        current.map(|c| {
            // Bytes that are not text (a Redis client's binary value) are served as they
            // are, never as a lossy JSON string.
            let binary = c.value.is_binary();
            let body = if binary { c.value.bytes.to_vec() } else { c.value.to_json_bytes().into_owned() };
            (body, binary, c.version, c.expires_at)
        })
    })?;
    let Some((body, binary, version, expires_at)) = found else { return Err(ApiError::not_found(key)) };
    let mut response = Response::new(body.into());
    let h = response.headers_mut();
    let content_type = if binary { "application/octet-stream" } else { "application/json" };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", version_string(state, version))) {
        h.insert(header::ETAG, v);
    }
    if let Some(origin) = state.db.store().origins().get(version.origin)
        && let Ok(v) = HeaderValue::from_str(&origin.region)
    {
        h.insert("x-geocache-origin-region", v);
    }
    if let Some(at) = expires_at
        && let Ok(v) = HeaderValue::from_str(&rfc3339_ms(at))
    {
        h.insert("x-geocache-expires-at", v);
    }
    Ok(response)
}

/// `X-Geocache-After: <token>`: waits until this node applied that write.
async fn wait_for_after(state: &NodeState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(raw) = headers.get("x-geocache-after") else { return Ok(()) };
    let token =
        raw.to_str().ok().and_then(Token::parse).ok_or_else(|| {
            ApiError::bad_request("invalid_token", "X-Geocache-After is not a token returned by a write")
        })?;
    crate::replication::wait_for_token(state, &token)
        .await
        .map_err(|e| ApiError::new(StatusCode::GATEWAY_TIMEOUT, "not_caught_up", e.0))
}

/// Waits for the write to be durable here, then confirmed at the `ack` level.
async fn acknowledge<R>(state: &NodeState, written: &Written<R>, ack: Ack) -> Result<(), ApiError> {
    state.db.wait_durable(written.lsn).await?;
    if let Some(seq) = written.seq {
        let stream = state.db.journal().local_stream();
        state
            .replication
            .wait_for_ack(stream, seq, ack)
            .await
            .map_err(|e| ApiError::new(StatusCode::GATEWAY_TIMEOUT, "ack_timeout", e.0))?;
    }
    Ok(())
}

fn token_of<R>(state: &NodeState, written: &Written<R>) -> Option<String> {
    written.seq.map(|seq| Token { stream: state.db.journal().local_stream().clone(), seq }.to_string())
}

fn write_response<R>(
    state: &NodeState,
    key: &str,
    status: StatusCode,
    written: &Written<R>,
    expires_at: Option<u64>,
) -> Response {
    let token = token_of(state, written);
    let body = WriteBody {
        key,
        version: written.version.map(|v| version_string(state, v)).unwrap_or_default(),
        expires_at: expires_at.map(rfc3339_ms),
        token: token.clone(),
    };
    let mut response = json_response(status, &body);
    if let Some(t) = token
        && let Ok(v) = HeaderValue::from_str(&t)
    {
        response.headers_mut().insert("x-geocache-token", v);
    }
    response
}

async fn put(
    state: &NodeState,
    key: &str,
    body: bytes::Bytes,
    ttl: Option<u64>,
    ack: Ack,
) -> Result<Response, ApiError> {
    let value = Value::json(body.to_vec()).map_err(DbError::from)?;
    let expiry = match ttl {
        Some(ms) => Expiry::after_ms(ms),
        None => state.default_expiry(),
    };
    let written = state.db.put(key, value, expiry)?;
    acknowledge(state, &written, ack).await?;
    let PutOutcome { created, expires_at } = written.reply;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(write_response(state, key, status, &written, expires_at))
}

async fn patch(
    state: &NodeState,
    key: &str,
    body: bytes::Bytes,
    ttl: Option<u64>,
    ack: Ack,
) -> Result<Response, ApiError> {
    let patch: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| DbError::InvalidJson(crate::store::InvalidJson(e.to_string())))?;
    let default_expiry = state.default_expiry();
    let written = state.db.update(key, |current| {
        let mut doc = current.map(|c| c.value.to_json_value()).unwrap_or(serde_json::Value::Null);
        merge_patch(&mut doc, &patch);
        let expiry = match (ttl, &current) {
            (Some(ms), _) => Expiry::after_ms(ms),
            (None, Some(_)) => Expiry::Keep,
            (None, None) => default_expiry,
        };
        let expires_at = expiry.resolve(current.as_ref());
        Ok(Decision::Write {
            value: Some(Value::from_json_value(&doc)),
            expires_at,
            reply: PutOutcome { created: current.is_none(), expires_at },
        })
    })?;
    acknowledge(state, &written, ack).await?;
    let PutOutcome { created, expires_at } = written.reply;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(write_response(state, key, status, &written, expires_at))
}

async fn delete(state: &NodeState, key: &str, ack: Ack) -> Result<Response, ApiError> {
    let written = state.db.delete(key)?;
    if !written.reply {
        return Err(ApiError::not_found(key));
    }
    acknowledge(state, &written, ack).await?;
    let mut response = Response::new(bytes::Bytes::new().into());
    *response.status_mut() = StatusCode::NO_CONTENT;
    if let Some(t) = token_of(state, &written)
        && let Ok(v) = HeaderValue::from_str(&t)
    {
        response.headers_mut().insert("x-geocache-token", v);
    }
    Ok(response)
}

async fn expire(state: &NodeState, key: &str, ttl: Option<&str>, ack: Ack) -> Result<Response, ApiError> {
    let expiry = match ttl {
        None => {
            return Err(DbError::InvalidTtl(
                "ttl is required: a duration such as 30s, 0 to expire now, or none".into(),
            )
            .into());
        }
        Some("none") => Expiry::Never,
        Some(raw) => match parse_ttl_ms(raw).map_err(DbError::InvalidTtl)? {
            0 => Expiry::At(clock::now_ms()),
            ms => Expiry::after_ms(ms),
        },
    };
    let written = state.db.set_expiry(key, expiry)?;
    let Some(outcome) = &written.reply else { return Err(ApiError::not_found(key)) };
    let expires_at = outcome.expires_at;
    acknowledge(state, &written, ack).await?;
    Ok(write_response(state, key, StatusCode::OK, &written, expires_at))
}
