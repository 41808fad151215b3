//! The HTTP error type: one place that maps error codes to statuses and bodies.

use warp::http::{Method, StatusCode};
use warp::reply::Response;

use crate::db::DbError;

/// An error answered as `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(key: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("key {key:?} does not exist"))
    }

    pub fn method_not_allowed(method: &Method) -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method {method} is not allowed here"),
        )
    }

    pub fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        super::json_response(self.status, &body)
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        let status = match &e {
            DbError::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            DbError::Persistence(_) => StatusCode::SERVICE_UNAVAILABLE,
            DbError::EmptyKey | DbError::KeyTooLong { .. } | DbError::InvalidJson(_) | DbError::InvalidTtl(_) => {
                StatusCode::BAD_REQUEST
            }
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}
