//! The HTTP door against the real test mint.
