//! The one place an error becomes an HTTP answer.
//!
//! Error policy: clients get a status, a short machine-readable `error` and a
//! one-line `detail` that never contains a secret, a token or an internal cause.
//! The whole cause chain goes to the log, with the request's ids, where the error
//! is raised (see `connect.rs`). 5xx means "not stored; try again".

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("not found")]
    NotFound,
    /// The request is valid but the resource's state forbids it.
    #[error("{0}")]
    Conflict(String),
    #[error("body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body did not arrive in time.
    #[error("body not received within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: String,
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Timeout(_) => "request_timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Unavailable(_) = self {
            response.insert_header(("Retry-After", "5"));
        }
        if let ApiError::Unauthorized(_) = self {
            response.insert_header(("WWW-Authenticate", "JWT"));
        }
        response.json(ErrorBody {
            error: self.code(),
            detail: self.to_string(),
        })
    }
}

/// A store failure: 503 (retry later) when the store is away, 500 otherwise.
/// Logged here, with the cause chain, inside the request's span.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::error!(error = ?e, "store unavailable");
            ApiError::Unavailable("store unavailable, retry later".into())
        } else if let StoreError::Invalid(reason) = &e {
            tracing::warn!(%reason, "value refused by the store");
            ApiError::BadRequest(e.to_string())
        } else {
            tracing::error!(error = ?e, "store error");
            ApiError::Internal
        }
    }
}
