//! RFC 9457 problem details (`application/problem+json`), with the fields at fault.

use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// One field that made a request invalid. `pointer` is an RFC 6901 JSON Pointer into the
/// request body (e.g. `/items/0/sku`), or a header name prefixed with `header:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// A problem details document. `kind` becomes the `type` member.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extension members (RFC 9457 §3.2), e.g. `available` for out-of-stock.
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// When to try again (the `Retry-After` header), for 409 and 503.
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// The internal cause, for logs and spans; never sent to the client.
    #[serde(skip)]
    pub cause: Option<String>,
}

impl Problem {
    /// `slug` names the problem type; it is published as `/problems/<slug>`, a relative
    /// reference resolved against the shop's own base URL.
    pub fn new(status: u16, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("/problems/{slug}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            errors: Vec::new(),
            extensions: serde_json::Map::new(),
            retry_after: None,
            cause: None,
        }
    }

    /// Keeps `cause` for logs and spans (it never reaches the client).
    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn with_extension(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(name.to_owned(), value);
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(
            400,
            "malformed-json",
            "Request body is not valid JSON",
            detail,
        )
        .with_errors(vec![FieldError::new("", "not valid JSON")])
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.pointer, one.detail),
            many => format!("{} fields are invalid", many.len()),
        };
        Self::new(422, "validation-error", "The order is invalid", detail).with_errors(errors)
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "body-too-large",
            "Request body too large",
            format!("the request body must not exceed {limit} bytes"),
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, "not-found", "Not found", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(500, "internal-error", "Internal error", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut problem = Self::new(
            503,
            "unavailable",
            "Service temporarily unavailable",
            detail,
        );
        problem.retry_after = Some(1);
        problem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_rfc9457_members_and_extensions() {
        let p = Problem::validation(vec![FieldError::new("/email", "is not an email address")])
            .with_extension("order_id", serde_json::json!("ord_1"));
        let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(v["type"], "/problems/validation-error");
        let internal = Problem::unavailable("try again").with_cause("redis: connection refused");
        let shown = String::from_utf8(internal.to_json()).unwrap();
        assert!(!shown.contains("redis"), "{shown}");
        assert_eq!(internal.retry_after, Some(1));
        assert_eq!(v["status"], 422);
        assert_eq!(v["detail"], "/email: is not an email address");
        assert_eq!(v["errors"][0]["pointer"], "/email");
        assert_eq!(v["order_id"], "ord_1");
    }
}
