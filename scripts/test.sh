#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests and the
# integration tests on a real fleet of sshd hosts behind HAProxy.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
# The fleet must start: in CI a test that cannot build it fails, never skips.
CI=${CI:-true} cargo test --locked --all-targets
