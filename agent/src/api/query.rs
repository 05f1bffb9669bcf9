//! The query-string extractor of the API: the `api` crate's query types, refused with a clear
//! 400 `{"message": ...}`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::Failure;

pub use ::api::query::{ForceQuery, ListQuery, UpdateQuery, bool_value};

/// A typed query whose rejection is a clear 400 `{"message": ...}`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Failure> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                Failure::bad_request(format!("invalid query parameters: {}", e.body_text()))
            })
    }
}
