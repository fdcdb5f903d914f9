#!/usr/bin/env bash
# Installs what building shipit, its tests and its demo need on a Debian 12
# machine, as root: OpenSSH (the test fleet's hosts run real sshd), the load
# balancers the fleet puts in front of them (HAProxy, nginx, Caddy), Prometheus
# (scraping HAProxy for metric gates), socat, curl, iproute2 (network
# namespaces), python3 (the demo app), and a Rust toolchain if none is
# installed. Safe to run again; silent when there is nothing to do.
#
# The fleet runs its own load balancers and Prometheus, on its own addresses.
# The packaged services must never run: they would hold ports (nginx and Caddy
# :80, Prometheus :9090 on every address) that fleets bind. So packages are
# installed with service starts denied, and the services are stopped and
# disabled if they run or are enabled anyway.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps.sh: run as root (the test fleet needs network namespaces)" >&2
	exit 1
fi

packages=(openssh-server openssh-client haproxy nginx caddy prometheus socat iproute2 util-linux procps python3 ca-certificates curl git gcc libc6-dev)
services=(nginx caddy prometheus haproxy)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps.sh: installing ${missing[*]}"
	# Deny service starts during the install (invoke-rc.d and deb-systemd-invoke
	# both ask policy-rc.d), unless the machine already has its own policy.
	policy=/usr/sbin/policy-rc.d
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# install-deps.sh: no service starts while installing\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	rm -f "$policy"
	trap - EXIT
fi

# Stop and disable the packaged services, in case they run or would start at boot.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	for s in "${services[@]}"; do
		if systemctl is-active --quiet "$s" 2>/dev/null || systemctl is-enabled --quiet "$s" 2>/dev/null; then
			systemctl disable --now --quiet "$s" >/dev/null 2>&1 || true
		fi
	done
else
	for s in "${services[@]}"; do
		if [ -x "/etc/init.d/$s" ] && "/etc/init.d/$s" status >/dev/null 2>&1; then
			"/etc/init.d/$s" stop >/dev/null 2>&1 || true
		fi
	done
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
