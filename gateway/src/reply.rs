//! What every route answers: one [`Reply`] type, its problem bodies
//! ([`protocol::Problem`]), and its conversion to an HTTP response. A 500
//! never says why: the cause goes to the gateway's log.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use protocol::Problem;
use serde_json::Value;

/// A route's answer.
#[derive(Debug)]
pub enum Reply {
    /// JSON: `application/json` for a 2xx, `application/problem+json` else.
    Json {
        /// HTTP status.
        status: u16,
        /// The body.
        body: Value,
    },
    /// `text/plain` (the policy text, a signed bundle).
    Text(String),
    /// `application/octet-stream` (chunk frames, delta records).
    Frames(Vec<u8>),
    /// OpenMetrics text (`GET /v1/admin/metrics`).
    Metrics(String),
}

/// A 200 with `body` as JSON.
pub fn ok(body: impl serde::Serialize) -> Reply {
    match serde_json::to_value(body) {
        Ok(body) => Reply::Json { status: 200, body },
        Err(e) => internal(&e),
    }
}

/// A refusal: the title says what, the detail why; `extra`'s members join them.
pub fn refuse(status: u16, title: &str, detail: impl Into<String>, extra: Value) -> Reply {
    let problem = Problem::new(status, title, detail).with(extra);
    match serde_json::to_value(problem) {
        Ok(body) => Reply::Json { status, body },
        Err(_) => Reply::Json {
            status,
            body: Value::Null,
        },
    }
}

/// A 500 whose body says nothing of the cause; the cause goes to the log.
pub fn internal(e: &dyn std::fmt::Display) -> Reply {
    tracing::error!(error = %e, "request failed");
    refuse(
        500,
        "internal error",
        "the gateway could not complete the request; its log says why",
        Value::Null,
    )
}

/// A 400.
pub fn bad(detail: impl Into<String>) -> Reply {
    refuse(400, "bad request", detail, Value::Null)
}

/// The typed request in `body`, or a 400 naming what is wrong.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| bad(format!("not the expected JSON: {e}")))
}

impl Reply {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Reply::Json { status, .. } => *status,
            Reply::Text(_) | Reply::Frames(_) | Reply::Metrics(_) => 200,
        }
    }

    /// The body's length in bytes, as sent.
    pub fn body_len(&self) -> usize {
        match self {
            Reply::Json { body, .. } => body.to_string().len(),
            Reply::Text(t) | Reply::Metrics(t) => t.len(),
            Reply::Frames(f) => f.len(),
        }
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let (status, ctype, bytes) = match self {
            Reply::Json { status, body } => {
                let ctype = if (200..300).contains(&status) {
                    "application/json"
                } else {
                    "application/problem+json"
                };
                (status, ctype, Bytes::from(body.to_string()))
            }
            Reply::Text(t) => (200, "text/plain; charset=utf-8", Bytes::from(t)),
            Reply::Frames(f) => (200, "application/octet-stream", Bytes::from(f)),
            Reply::Metrics(t) => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                Bytes::from(t),
            ),
        };
        let mut r = Response::new(Full::new(bytes));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    }
}
