//! shipit: agentless SSH deploys.
pub mod transport;
