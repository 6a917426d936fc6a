//! API errors as the Kubernetes API server reports them: a `Status` object with a `reason`,
//! an HTTP code, and `details` naming the object and, for invalid objects, each field.
//! Every failing request path ends here, so clients see the same shapes as on a real cluster.

use serde_json::{Value, json};

use crate::schema::FieldError;

/// A failed API request, rendered as a `meta/v1` `Status`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `StatusReason` (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// Human-readable message, worded like the API server's.
    pub message: String,
    /// `details`, when the error is about one object.
    pub details: Option<Value>,
}

/// The object an error is about: its resource (plural), group and name.
pub struct Subject<'a> {
    /// Group (empty for the core group).
    pub group: &'a str,
    /// Resource, plural (`configmaps`).
    pub resource: &'a str,
    /// Object name.
    pub name: &'a str,
}

impl Subject<'_> {
    /// How the API server names the resource in messages: `configmaps`, `datasets.aigc.dev`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    fn details(&self) -> Value {
        let mut details = json!({"name": self.name, "kind": self.resource});
        if !self.group.is_empty() {
            details["group"] = json!(self.group);
        }
        details
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for a path that names no resource this server serves.
    pub fn no_route() -> Self {
        let mut error = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        error.details = Some(json!({"causes": [{
            "reason": "UnexpectedServerResponse",
            "message": "404 page not found"
        }]}));
        error
    }

    /// 404 for a missing object.
    pub fn not_found(subject: &Subject<'_>) -> Self {
        let mut error = Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", subject.qualified(), subject.name),
        );
        error.details = Some(subject.details());
        error
    }

    /// 409 for a create whose name is taken.
    pub fn already_exists(subject: &Subject<'_>) -> Self {
        let mut error = Self::new(
            409,
            "AlreadyExists",
            format!(
                "{} \"{}\" already exists",
                subject.qualified(),
                subject.name
            ),
        );
        error.details = Some(subject.details());
        error
    }

    /// 409 for a write based on a stale resourceVersion or a failed precondition.
    pub fn conflict(subject: &Subject<'_>, why: &str) -> Self {
        let mut error = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {why}",
                subject.qualified(),
                subject.name
            ),
        );
        error.details = Some(subject.details());
        error
    }

    /// 409 for server-side apply conflicts with other field managers.
    pub fn apply_conflict(subject: &Subject<'_>, conflicts: &[(String, String)]) -> Self {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(manager, field)| format!("conflict with \"{manager}\": {field}"))
            .collect();
        let message = if lines.len() == 1 {
            format!("Apply failed with 1 conflict: {}", lines[0])
        } else {
            format!(
                "Apply failed with {} conflicts: {}",
                lines.len(),
                lines.join("\n")
            )
        };
        let mut details = subject.details();
        details["causes"] = conflicts
            .iter()
            .map(|(manager, field)| {
                json!({"reason": "FieldManagerConflict",
                       "message": format!("conflict with \"{manager}\""),
                       "field": field})
            })
            .collect();
        Self {
            code: 409,
            reason: "Conflict",
            message,
            details: Some(details),
        }
    }

    /// 422 with one cause per invalid field.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Self {
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let message = if shown.len() == 1 {
            format!("{qualified} \"{name}\" is invalid: {}", shown[0])
        } else {
            format!("{qualified} \"{name}\" is invalid: [{}]", shown.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .zip(&shown)
            .map(|(error, text)| {
                let detail = text
                    .strip_prefix(&format!("{}: ", error.field))
                    .unwrap_or(text);
                json!({"reason": error.reason(), "message": detail, "field": error.field})
            })
            .collect();
        let mut details = json!({"name": name, "kind": kind, "causes": causes});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        Self {
            code: 422,
            reason: "Invalid",
            message,
            details: Some(details),
        }
    }

    /// 403 for writes the server refuses (creating into a terminating namespace).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 406 when the client accepts no media type the server can produce.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }

    /// 410 when a watch or continue token refers to a compacted resourceVersion.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 for bodies over the server's limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    /// 415 for a body in a media type the verb does not accept.
    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}; got {content_type:?}",
                accepted.join(", ")
            ),
        )
    }

    /// 500 for a fault inside the server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` object sent as the response body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// 422 for a JSON patch that cannot be applied to the object. The API server answers
    /// these with a generic message and the patch library's own words as the one cause.
    pub fn patch_not_applicable(cause: impl Into<String>) -> Self {
        let mut error = Self::new(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        );
        error.details = Some(json!({"causes": [{
            "reason": "UnexpectedServerResponse",
            "message": cause.into(),
        }]}));
        error
    }
}
