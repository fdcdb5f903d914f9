//! shipit: agentless SSH deploys.
pub mod config;
pub mod execute;
pub mod host;
pub mod plan;
pub mod report;
pub mod shell;
#[cfg(test)]
mod testing;
pub mod transport;
