//! Helpers shared by the integration tests.
pub mod behind_haproxy;
pub mod fleet;
pub mod load;
pub mod shipit;
