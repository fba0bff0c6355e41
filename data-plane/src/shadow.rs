//! Traffic shadowing: mirrored requests, the response diff and the guardrail.

pub(crate) mod diff;
