//! Integration tests against real processes (a fleet of OpenSSH hosts).
mod ssh;
mod support;
