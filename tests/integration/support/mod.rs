//! Helpers shared by the integration tests.
pub mod fleet;
pub mod load;
pub mod shipit;
