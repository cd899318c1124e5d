//! `ApiError`: every failure of the API as a JSON problem body `{error, message, field?}`.
//!
//! Client errors are 4xx with a message that says what to fix. Server errors never
//! leak internals: the details go to the log with a correlation id, and the body only
//! says that something failed (house style 6.4).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::control::ControlError;
use crate::store::StoreError;

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    /// A stable machine-readable code (`not_found`, `unauthorized`...).
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An API failure.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 about one field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.to_owned()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
        }
    }

    /// 401: no or an unknown token.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 429: too many failed attempts from this address.
    pub fn too_many_attempts(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", message)
    }

    /// 403: the token's scope does not allow this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422: well-formed but cannot be applied.
    pub fn unprocessable(message: impl Into<String>, field: Option<String>) -> ApiError {
        ApiError {
            field,
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
        }
    }

    /// 503: a dependency (the database) is down.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: logs `detail`, returns a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        let id = uuid::Uuid::new_v4();
        tracing::error!(error_id = %id, error = %detail, "internal error in the API");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error (id {id}); see the gateway's log"),
        )
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            error: self.code.to_owned(),
            message: self.message,
            field: self.field,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::Conflict { .. } => ApiError::conflict(e.to_string()),
            StoreError::Invalid { .. } => ApiError::bad_request(e.to_string()),
            ref unavailable if unavailable.is_unavailable() => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable(
                    "the database is unavailable; live calls are not affected, try again later",
                )
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        match e {
            ControlError::NotFound { message } => ApiError::not_found(message),
            ControlError::Unprocessable { message, field } => {
                ApiError::unprocessable(message, field)
            }
            ControlError::Conflict { message } => ApiError::conflict(message),
            ControlError::Unavailable { message } => ApiError::unavailable(message),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
        use axum::extract::rejection::JsonRejection as J;
        match rejection {
            J::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ),
            J::JsonDataError(e) => ApiError::unprocessable(e.body_text(), None),
            J::JsonSyntaxError(e) => ApiError::bad_request(e.body_text()),
            other => ApiError::bad_request(other.body_text()),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(rejection.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> ApiError {
        ApiError::bad_request(rejection.body_text())
    }
}

/// JSON body extractor whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

/// Query extractor whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryParams<T>(pub T);

/// Path extractor whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct PathParams<T>(pub T);
