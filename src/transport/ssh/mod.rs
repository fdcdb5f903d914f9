//! OpenSSH-compatible client over russh (being written).
