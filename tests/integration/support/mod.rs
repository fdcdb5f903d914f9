//! Shared test helpers.
pub mod fleet;
pub use fleet::*;
