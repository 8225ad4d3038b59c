//! The server's error answer: JSON `{"error": "…", "error_type": "…"}` with a status code, in
//! text-embeddings-inference's shape so its clients read Kiln's errors unchanged.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// One failed request: the status and what to tell the client.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, naming the input, field or limit at fault.
    pub message: String,
    /// TEI's error kind: `Validation`, `Tokenizer`, `Overloaded`, `Unauthorized`, `Backend`,
    /// `NotFound`.
    pub error_type: &'static str,
}

impl ApiError {
    /// 422: the request is well-formed JSON but asks for something invalid.
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            error_type: "Validation",
        }
    }

    /// 413: an input or the body is over a limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: message.into(),
            error_type: "Validation",
        }
    }

    /// 422: the tokenizer refused an input.
    pub fn tokenizer(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            error_type: "Tokenizer",
        }
    }

    /// 408: the request body did not arrive in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: message.into(),
            error_type: "Timeout",
        }
    }

    /// 429: the server holds as many requests as it may.
    pub fn overloaded(limit: usize) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "the server is handling its limit of {limit} concurrent requests (--max-concurrent-requests); retry later"
            ),
            error_type: "Overloaded",
        }
    }

    /// 401: `--api-key` is set and the request does not carry it.
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message:
                "this server needs the header `Authorization: Bearer <key>` with its --api-key"
                    .into(),
            error_type: "Unauthorized",
        }
    }

    /// 404: no such route for this server's task.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            error_type: "NotFound",
        }
    }

    /// 500: the model failed on a batch (the server itself keeps running).
    pub fn backend(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            error_type: "Backend",
        }
    }

    /// 503: the server is shutting down or its inference thread is gone.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            error_type: "Unhealthy",
        }
    }

    /// The answer for a library error raised while serving a request: an input the model
    /// refuses is the client's (422), a non-finite output the model's (500).
    pub fn from_kiln(e: crate::Error) -> Self {
        match e {
            crate::Error::Input(m) => ApiError::validation(m),
            crate::Error::Tokenizer { .. } => ApiError::tokenizer(e.to_string()),
            other => ApiError::backend(other.to_string()),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "error_type": self.error_type });
        (self.status, axum::Json(body)).into_response()
    }
}
