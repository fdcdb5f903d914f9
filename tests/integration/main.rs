//! Integration tests: one test binary (`cargo test --test integration`), so the
//! support code and the fleet tooling are compiled once for all of them.
//! They need root (network and mount namespaces) and fail, never skip, without it.
// Only this branch needs the allow: support::shipit serves the deploy tests on main.
#[allow(dead_code)]
mod support;

mod ssh;
