//! `ApiError` and its RFC 9457 rendering (`application/problem+json` with type, title,
//! status, detail). A dependency failure renders 503 with `Retry-After`.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every failure an HTTP handler can answer with; messages are what the client reads.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// A rate limit: retry after this many seconds.
    #[error("too many requests, retry in {0} s")]
    TooManyRequests(u64),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The body of a problem response. `field` is our extension naming the offending input.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds for `Retry-After` (503 and 429); a 503 without one says 2.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn response(&self) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut builder = HttpResponse::build(status);
        builder.content_type(PROBLEM_JSON);
        match (status, self.retry_after) {
            (StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS, Some(seconds)) => {
                builder.insert_header(("Retry-After", seconds.to_string()));
            }
            (StatusCode::SERVICE_UNAVAILABLE, None) => {
                builder.insert_header(("Retry-After", "2"));
            }
            _ => {}
        }
        if status == StatusCode::UNAUTHORIZED {
            builder.insert_header(("WWW-Authenticate", "Bearer"));
        }
        builder.body(serde_json::to_vec(self).expect("problems serialize"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let detail = match self {
            // The chain may name hosts or SQL; it goes to the log, not to the client.
            Self::Internal(err) => {
                tracing::error!(error = ?err, "request failed");
                "internal error".to_owned()
            }
            Self::Unavailable(why) => {
                tracing::warn!(reason = %why, "dependency unavailable");
                "a dependency is unavailable, retry later".to_owned()
            }
            other => other.to_string(),
        };
        let mut problem = Problem::new(status, detail);
        if let Self::Invalid { field, .. } = self {
            problem.field = Some(field.clone());
        }
        if let Self::TooManyRequests(seconds) = self {
            problem.retry_after = Some(*seconds);
        }
        problem.response()
    }
}
