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
    /// Not found, saying what was looked for.
    #[error("{0}")]
    Missing(String),
    /// A proxy API key that is missing or wrong (`WWW-Authenticate: Bearer`).
    #[error("{0}")]
    BadKey(String),
    /// Authenticated, but outside what the credential may do.
    #[error("{0}")]
    Forbidden(String),
    /// The product answered nothing usable, or could not be reached.
    #[error("{0}")]
    BadGateway(String),
    /// The product did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// Over a rate limit; try again after this many seconds.
    #[error("{0}")]
    RateLimited(String, u64),
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

/// The error shape every failure has.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody<'a> {
    /// A short machine-readable code, such as `bad_request` or `not_found`.
    error: &'a str,
    /// One line saying why.
    detail: String,
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound | ApiError::Missing(_) => "not_found",
            ApiError::BadKey(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BadGateway(_) => "bad_gateway",
            ApiError::GatewayTimeout(_) => "gateway_timeout",
            ApiError::RateLimited(..) => "rate_limited",
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
            ApiError::NotFound | ApiError::Missing(_) => StatusCode::NOT_FOUND,
            ApiError::BadKey(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
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
        if let ApiError::BadKey(_) = self {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let ApiError::RateLimited(_, seconds) = self {
            response.insert_header(("Retry-After", seconds.to_string()));
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
