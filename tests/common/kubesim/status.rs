//! `Status` objects: the body of every error a Kubernetes API server answers with.
//!
//! The texts follow apimachinery's `errors` package word for word where clients look at them
//! (kubectl prints `message`; kube-rs and the Python client expose `code` and `reason`), so a
//! client that handles a real cluster's errors handles these.

use serde_json::{json, Value};

/// An error answer: HTTP code and the Status body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub body: Value,
}

/// The resource an error is about, as errors name it (`pods`, `deployments.apps`).
pub struct What<'a> {
    pub group: &'a str,
    pub plural: &'a str,
}

impl What<'_> {
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    fn details(&self, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": self.plural});
        if !self.group.is_empty() {
            d["group"] = json!(self.group);
        }
        d
    }
}

pub fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> ApiError {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    ApiError { code, body }
}

pub fn not_found(w: &What, name: &str) -> ApiError {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", w.qualified()),
        Some(w.details(name)),
    )
}

pub fn already_exists(w: &What, name: &str) -> ApiError {
    status(
        409,
        "AlreadyExists",
        format!("{} \"{name}\" already exists", w.qualified()),
        Some(w.details(name)),
    )
}

pub fn conflict(w: &What, name: &str) -> ApiError {
    status(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            w.qualified()
        ),
        Some(w.details(name)),
    )
}

/// One field error of an `Invalid` answer.
pub struct Cause {
    pub field: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueForbidden`, `FieldValueNotSupported`.
    pub reason: &'static str,
    /// The text after the field name (`Invalid value: 5: must be …`).
    pub message: String,
}

impl Cause {
    pub fn invalid(field: &str, value: &Value, detail: &str) -> Cause {
        let v = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {v}: {detail}"),
        }
    }
    pub fn required(field: &str) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        }
    }
    pub fn forbidden(field: &str, detail: &str) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
        }
    }
}

/// 422 `Kind "name" is invalid: field: message` (several causes in brackets).
pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let list = if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    };
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let mut details = json!({
        "name": name,
        "kind": kind,
        "causes": causes.iter().map(|c| json!({
            "reason": c.reason, "message": c.message, "field": c.field
        })).collect::<Vec<_>>(),
    });
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    status(
        422,
        "Invalid",
        format!("{qualified} \"{name}\" is invalid: {list}"),
        Some(details),
    )
}

pub fn bad_request(message: String) -> ApiError {
    status(400, "BadRequest", message, None)
}

pub fn unauthorized() -> ApiError {
    status(401, "Unauthorized", "Unauthorized".into(), None)
}

/// 403 from authorization (RBAC's wording).
pub fn forbidden(
    user: &str,
    verb: &str,
    w: &What,
    ns: Option<&str>,
    name: Option<&str>,
) -> ApiError {
    let scope = match ns {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    let subject = match name {
        Some(n) => format!("{} \"{n}\"", w.qualified()),
        None => w.qualified(),
    };
    let mut details = json!({"kind": w.plural});
    if let Some(n) = name {
        details["name"] = json!(n);
    }
    if !w.group.is_empty() {
        details["group"] = json!(w.group);
    }
    status(
        403,
        "Forbidden",
        format!(
            "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
            w.plural, w.group
        ),
        Some(details),
    )
}

/// 403 from admission: a ResourceQuota is used up (the quota admission plugin's wording).
pub fn quota_exceeded(w: &What, name: &str, quota: &str, used: usize, limit: usize) -> ApiError {
    status(
        403,
        "Forbidden",
        format!(
            "{} \"{name}\" is forbidden: exceeded quota: {quota}, requested: pods=1, used: pods={used}, limited: pods={limit}",
            w.qualified()
        ),
        Some(w.details(name)),
    )
}

pub fn unsupported_media_type(ct: &str) -> ApiError {
    status(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json, application/merge-patch+json, application/strategic-merge-patch+json \
             (not {ct})"
        ),
        None,
    )
}

pub fn not_acceptable() -> ApiError {
    status(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json".into(),
        None,
    )
}

pub fn method_not_allowed() -> ApiError {
    status(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource".into(),
        None,
    )
}

pub fn page_not_found() -> ApiError {
    status(
        404,
        "NotFound",
        "the server could not find the requested resource".into(),
        Some(json!({})),
    )
}

/// The watch `ERROR` Status for a resourceVersion older than what the server still keeps.
pub fn expired(asked: u64, oldest: u64) -> ApiError {
    status(
        410,
        "Expired",
        format!("too old resource version: {asked} ({oldest})"),
        None,
    )
}
