//! API errors in OpenAI's JSON shape, `{"error":{"message","type","param","code"}}`, with
//! the status codes of the contract and `Retry-After` where waiting helps.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use nave_consensus::state::{CommandResult, Refusal};

use crate::api::types::{ErrorBody, ErrorEnvelope};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), param: None, retry_after_s: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid or missing API key: send Authorization: Bearer <key>")
    }
    pub fn unknown_model(model: &str, known: &[String]) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            format!("model {model:?} does not exist here (served: {})", known.join(", ")),
        );
        e.param = Some("model".into());
        e
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { retry_after_s: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message) }
    }
    pub fn deadline() -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "the request's deadline passed")
    }
    pub fn with_param(mut self, p: &str) -> Self {
        self.param = Some(p.into());
        self
    }

    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 405 | 413 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            _ => "server_error",
        }
    }

    pub fn code(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "invalid_request",
            401 => "invalid_api_key",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            413 => "body_too_large",
            429 => "rate_limited",
            503 => "unavailable",
            504 => "timeout",
            _ => "internal_error",
        }
    }

    pub fn body(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: ErrorBody {
                message: self.message.clone(),
                kind: self.kind().into(),
                param: self.param.clone(),
                code: self.code().into(),
            },
        }
    }

    /// The cluster state could not be read or written (no leader, no quorum): 503.
    pub fn no_quorum(e: impl std::fmt::Display) -> Self {
        Self::unavailable(format!("the cluster state is not available ({e}); retry shortly"))
    }

    /// The one mapping of a command's result that is not what the handler expected to an
    /// answer: a refused admission is 401 or 429, an invalid command 409, a missing
    /// object 404, anything else a bug of ours (500).
    pub fn from_command(result: CommandResult) -> Self {
        match result {
            CommandResult::Refused { reason, retry_after_ms } => Self::refusal(reason, retry_after_ms),
            CommandResult::Invalid(m) => Self::new(StatusCode::CONFLICT, m),
            CommandResult::NotFound(m) => Self::new(StatusCode::NOT_FOUND, m),
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected result {other:?}")),
        }
    }

    fn refusal(r: Refusal, retry_after_ms: u64) -> Self {
        let what = match r {
            Refusal::UnknownKey | Refusal::Revoked => return Self::unauthorized(),
            Refusal::RequestRate => "request rate limit",
            Refusal::TokenRate => "token rate limit",
            Refusal::DailyBudget => "daily token budget",
            Refusal::Concurrency => "limit of concurrent requests",
            Refusal::ResponseQuota => "quota of stored responses",
        };
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("this key's {what} is used up; retry in {} s", retry_after_ms.div_ceil(1000)),
        );
        e.retry_after_s = Some(retry_after_ms.div_ceil(1000).max(1));
        e
    }
}

/// `?` on a consensus read or write: the state is not available.
impl From<nave_consensus::Error> for ApiError {
    fn from(e: nave_consensus::Error) -> Self {
        Self::no_quorum(e)
    }
}

/// Expects [`CommandResult::Done`] from a write; anything else through
/// [`ApiError::from_command`].
pub fn done(result: nave_consensus::Result<CommandResult>) -> Result<(), ApiError> {
    match result? {
        CommandResult::Done => Ok(()),
        other => Err(ApiError::from_command(other)),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        resp
    }
}
