#!/usr/bin/env bash
# End-to-end deploy time: shipit against a hand-tuned OpenSSH script doing
# the same work, on the same test fleet, measured in the same run.
#
#   bench/deploy.sh [HOSTS] [RUNS]      (as root; default 8 hosts, 5 runs)
#
# Both deploy the demo app to every host: pack once, upload to all hosts at
# once, then roll out two hosts at a time (switch `current` by rename,
# restart, poll /health until the new release answers), then keep the newest
# 3 releases. The OpenSSH script multiplexes one ControlMaster connection per
# host, as a careful shell deployer would, in two variants: "cold" opens its
# connections in the run and closes them at the end (a CI job), "warm" keeps
# them open between runs (ControlPersist on a laptop; it pays no connection
# at all). shipit always connects afresh, and additionally takes its deploy
# lock, reads each host's state, journals every step and appends to
# revisions.log. hyperfine prints the means and the ratios.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
hosts=${1:-8}
runs=${2:-5}
cd "$root"

scripts/install-deps.sh
command -v hyperfine >/dev/null || apt-get install -y -qq hyperfine >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --quiet
shipit=$root/target/release/shipit

work=$(mktemp -d /tmp/shipit-bench.XXXXXX)
trap 'tests/fleet/fleet.sh down "$work/fleet" >/dev/null 2>&1; rm -rf "$work"' EXIT
tests/fleet/fleet.sh up "$work/fleet" --hosts "$hosts" >/dev/null
# shellcheck disable=SC1091
. "$work/fleet/fleet.env"

# The same app and deploy directory for both; each tool gets its own path.
mkdir -p "$work/project"
cp -r demo/app "$work/project/dist"
cat >"$work/project/deploy.toml" <<TOML
[app]
name = "bench"
deploy_to = "/srv/bench"
source = "dist"
keep_releases = 3
restart = "bin/restart"
[ssh]
user = "root"
identity_file = "$FLEET_IDENTITY"
known_hosts = "$FLEET_KNOWN_HOSTS"
config = false
[rollout]
rolling_batch_size = 2
[health]
url = "http://{address}:8080/health"
expect_body = "release={release}"
interval = "200ms"
[stages.bench]
$(grep -v '^#' "$FLEET_DIR/hosts.toml")
TOML

# The OpenSSH baseline, deploying to the same directory (the demo app on a
# host listens on one port, so both tools must restart the same app). The
# app reads its release id from its directory name, so the baseline names
# releases like shipit: the UTC time, moved past the newest existing one.
cat >"$work/openssh-deploy.sh" <<'SH'
#!/usr/bin/env bash
set -euo pipefail
. "$1/fleet/fleet.env"
d=/srv/bench
work=$1
mode=$2
if [ "$mode" = warm ]; then sockets=$work/warm; else sockets=$(mktemp -d "$work/cold.XXXXXX"); fi
mkdir -p "$sockets"
ssh_() { ssh -F "$FLEET_SSH_CONFIG" -o ControlMaster=auto -o "ControlPath=$sockets/%h" -o ControlPersist=60 "${@:2}"; }
set -- $FLEET_HOSTS
newest=$(ssh_ "$work" "$1" "ls -1 $d/releases 2>/dev/null | tail -n 1")
r=$(date -u +%Y%m%d%H%M%S)
if [ -n "$newest" ] && [ ! "$newest" \< "$r" ]; then
	r=$(date -u -d "@$(($(date -u -d "${newest:0:8} ${newest:8:2}:${newest:10:2}:${newest:12:2}" +%s) + 1))" +%Y%m%d%H%M%S)
fi
tar -czf "$work/release.tgz" -C "$work/project/dist" .
for h in $FLEET_HOSTS; do
	ssh_ "$work" "$h" "mkdir -p $d/releases/$r $d/shared && tar -xzf - -C $d/releases/$r" <"$work/release.tgz" &
done
wait
set -- $FLEET_HOSTS
while [ $# -gt 0 ]; do
	batch="$1 ${2:-}"
	shift; [ $# -gt 0 ] && shift
	for h in $batch; do
		(
			ssh_ "$work" "$h" "ln -sfn $d/releases/$r $d/.current.tmp && mv -fT $d/.current.tmp $d/current && cd $d/current && bin/restart $d" >/dev/null
			addr_var="FLEET_ADDR_$h"
			until curl -sf "http://${!addr_var}:8080/health" | grep -q "release=$r"; do sleep 0.2; done
		) &
	done
	wait
done
for h in $FLEET_HOSTS; do
	ssh_ "$work" "$h" "cd $d/releases && ls -1 | head -n -3 | xargs -r rm -rf" &
done
wait
if [ "$mode" = cold ]; then
	for h in $FLEET_HOSTS; do ssh_ "$work" "$h" -O exit 2>/dev/null & done
	wait
	rm -rf "$sockets"
fi
SH
chmod +x "$work/openssh-deploy.sh"

echo "== $hosts hosts, batches of 2, $runs runs each"
hyperfine --runs "$runs" --warmup 1 \
	-n shipit "cd $work/project && $shipit bench deploy -q" \
	-n openssh-cold "$work/openssh-deploy.sh $work cold" \
	-n openssh-warm "$work/openssh-deploy.sh $work warm"
