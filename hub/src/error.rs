//! API errors in OpenAI's JSON shape, `{"error":{"message","type","param","code"}}`, with
//! the status codes of the contract and `Retry-After` where waiting helps.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

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
            400 | 404 | 413 => "invalid_request_error",
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
            413 => "body_too_large",
            429 => "rate_limited",
            503 => "unavailable",
            504 => "timeout",
            _ => "internal_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code()}})
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
