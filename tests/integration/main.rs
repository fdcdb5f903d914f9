//! Integration tests: one test binary (`cargo test --test integration`), so the
//! support code and the fleet tooling are compiled once for all of them.
//! They need root (network and mount namespaces) and fail, never skip, without it.
mod support;

mod commands;
mod deploy;
mod exit_codes;
mod failures;
mod fleet_smoke;
mod hooks;
mod lb_caddy;
mod lb_nginx;
mod output;
mod pack;
mod resume;
mod roles_health;
mod rollout;
mod run_control;
mod signals;
mod ssh;
mod zero_downtime;
