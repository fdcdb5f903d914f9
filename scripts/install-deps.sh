#!/usr/bin/env bash
# Installs what building shipit, its tests and its demo need on a Debian
# machine, as root: OpenSSH (the test fleet's hosts run real sshd), HAProxy,
# socat, iproute2 (network namespaces), python3 (the demo app), and a Rust
# toolchain if none is installed. Safe to run again.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps.sh: run as root (the test fleet needs network namespaces)" >&2
	exit 1
fi

packages=(openssh-server openssh-client haproxy socat iproute2 util-linux procps python3 ca-certificates curl git gcc libc6-dev)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# sshd refuses to start without its privilege separation directory, which
# systemd would normally create.
mkdir -p /run/sshd

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
	export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
	echo "install-deps.sh: no cargo; installing Rust with rustup"
	curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy -c rustfmt
fi
