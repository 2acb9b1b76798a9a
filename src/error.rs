//! The typed errors every door returns.
//!
//! One error type for the whole core, with a closed set of `error_type`s that the wire contract
//! names (DESIGN.md, "Wire contracts"). Doors map it to their format without inspecting messages:
//! MCP returns it as an `isError` tool result, Nostr as a gift-wrapped error reply, HTTP as a
//! status code. When money was taken and the service could not be given, `refund_token` carries a
//! token worth what was received; it is a secret and is kept out of `Debug` and `Display`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The closed set of error kinds on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// The request is malformed: a missing or badly formed field.
    InvalidRequest,
    /// The tier (pod spec) or image asked for is not offered.
    InvalidSpec,
    /// The Cashu token cannot be decoded or is not usable.
    InvalidToken,
    /// The token's mint is not on the provider's whitelist.
    MintNotAllowed,
    /// The token was already spent (at the mint, or in a different request here).
    TokenAlreadySpent,
    /// The token is worth too little for the minimum duration.
    InsufficientPayment,
    /// No capacity (ports, workload quota) right now.
    ResourceUnavailable,
    /// Payment was taken but provisioning failed; a refund token is included.
    PodCreationFailed,
    /// No workload with that id.
    PodNotFound,
    /// The mint could not be reached or refused the swap for another reason.
    PaymentFailed,
    /// Something broke inside the provider.
    InternalError,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request",
            ErrorType::InvalidSpec => "invalid_spec",
            ErrorType::InvalidToken => "invalid_token",
            ErrorType::MintNotAllowed => "mint_not_allowed",
            ErrorType::TokenAlreadySpent => "token_already_spent",
            ErrorType::InsufficientPayment => "insufficient_payment",
            ErrorType::ResourceUnavailable => "resource_unavailable",
            ErrorType::PodCreationFailed => "pod_creation_failed",
            ErrorType::PodNotFound => "pod_not_found",
            ErrorType::PaymentFailed => "payment_failed",
            ErrorType::InternalError => "internal_error",
        }
    }

    /// Every error type, for documentation and exhaustive tests.
    pub const ALL: [ErrorType; 11] = [
        ErrorType::InvalidRequest,
        ErrorType::InvalidSpec,
        ErrorType::InvalidToken,
        ErrorType::MintNotAllowed,
        ErrorType::TokenAlreadySpent,
        ErrorType::InsufficientPayment,
        ErrorType::ResourceUnavailable,
        ErrorType::PodCreationFailed,
        ErrorType::PodNotFound,
        ErrorType::PaymentFailed,
        ErrorType::InternalError,
    ];
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The structured error body: `{error_type, message, details?, refund_token?}`.
#[derive(Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProviderError {
    pub error_type: ErrorType,
    /// A sentence a person or an agent can act on. Never contains a secret.
    pub message: String,
    /// Machine-readable specifics (e.g. `{"minimum_msats": 6000, "offered_msats": 1000}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// A Cashu token returning the money received, when payment was taken and the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_token: Option<Secret>,
}

impl ProviderError {
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        ProviderError {
            error_type,
            message: message.into(),
            details: None,
            refund_token: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn with_refund(mut self, token: Secret) -> Self {
        self.refund_token = Some(token);
        self
    }

    pub fn invalid_request(m: impl Into<String>) -> Self {
        Self::new(ErrorType::InvalidRequest, m)
    }
    pub fn invalid_spec(m: impl Into<String>) -> Self {
        Self::new(ErrorType::InvalidSpec, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorType::InternalError, m)
    }
    pub fn not_found(id: &str) -> Self {
        let shown: String = id.chars().take(80).collect();
        Self::new(ErrorType::PodNotFound, format!("no pod with id {shown:?}"))
    }
}

impl fmt::Debug for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderError")
            .field("error_type", &self.error_type)
            .field("message", &self.message)
            .field("details", &self.details)
            .field(
                "refund_token",
                &self.refund_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)?;
        if self.refund_token.is_some() {
            f.write_str(" (a refund token is attached)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProviderError {}

impl From<crate::store::StoreError> for ProviderError {
    fn from(e: crate::store::StoreError) -> Self {
        ProviderError::internal(format!("state store: {e}"))
    }
}

/// serde_json errors quote the offending value ("invalid type: string \"…\""); that value may be
/// a secret, so only the expectation is kept.
pub fn sanitize_serde(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    if let Some(pos) = msg.find(", expected") {
        if msg.starts_with("invalid type")
            || msg.starts_with("invalid value")
            || msg.starts_with("invalid length")
        {
            return format!(
                "a field has the wrong type or value (expected{})",
                &msg[pos + ", expected".len()..]
            );
        }
    }
    if msg.starts_with("missing field")
        || msg.starts_with("unknown field")
        || msg.starts_with("duplicate field")
    {
        return msg;
    }
    "arguments do not match the tool's input schema".into()
}
