//! The intercepted direct-message history endpoint.
pub mod errors;
