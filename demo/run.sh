#!/usr/bin/env bash
# The shipit demo: a local fleet of three hosts (network namespaces, each with
# its own address, /srv and OpenSSH sshd) behind a real HAProxy. shipit
# deploys the demo app, deploys a second version and rolls back, while a load
# loop sends requests through HAProxy and counts the ones that fail.
#
# Run as root on Debian: ./demo/run.sh   (installs what it needs first)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== building shipit"
cargo build --locked --quiet
shipit=$root/target/debug/shipit

work=$(mktemp -d /tmp/shipit-demo.XXXXXX)
load_pid=""
cleanup() {
	[ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null || true
	tests/fleet/fleet.sh down "$work/fleet" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== starting a fleet of 3 hosts behind HAProxy"
tests/fleet/fleet.sh up "$work/fleet" --hosts 3 --haproxy local
# shellcheck disable=SC1091
. "$work/fleet/fleet.env"

project=$work/shop
mkdir -p "$project"
cp -r demo/app "$project/dist"
cat >"$project/deploy.toml" <<TOML
[app]
name = "shop"
deploy_to = "/srv/shop"
source = "dist"
keep_releases = 3
shared_dirs = ["log"]
restart = "bin/restart"

[ssh]
user = "root"
identity_file = "$FLEET_IDENTITY"
known_hosts = "$FLEET_KNOWN_HOSTS"
config = false

[rollout]
rolling_batch_size = 1

[health]
url = "http://{address}:8080/health"
expect_body = "release={release}"
timeout = "20s"

[lb]
driver = "haproxy"
socket = "$FLEET_HAPROXY_SOCKET"
backend = "app"

[stages.production]
$(grep -v '^#' "$FLEET_DIR/hosts.toml")
TOML
cd "$project"
echo "== deploy.toml"
cat deploy.toml
echo
echo "== the plan, without connecting: shipit production deploy --dry-run"
"$shipit" production deploy --dry-run
echo
echo "== shipit production deploy   (v1)"
"$shipit" production deploy

echo "== waiting until HAProxy sees every host UP, then starting the load loop"
for _ in $(seq 1 100); do
	up=$(echo "show stat" | socat stdio "UNIX-CONNECT:$FLEET_HAPROXY_SOCKET" | awk -F, '$1=="app" && $2 ~ /^web/ && $18=="UP"' | wc -l)
	[ "$up" -eq 3 ] && break
	sleep 0.1
done
python3 "$root/demo/load.py" "$FLEET_LB_URL/" 4 30 &
load_pid=$!
sleep 1

echo "== shipit production deploy   (v2, while the load loop runs)"
echo v2 >dist/VERSION
"$shipit" production deploy
echo "== shipit production releases"
"$shipit" production releases
echo "== shipit production rollback   (back to v1, still under load)"
"$shipit" production rollback
sleep 1
kill -TERM "$load_pid"
status=0
wait "$load_pid" || status=$?
load_pid=""
echo
echo "== what every host serves now"
for h in $FLEET_HOSTS; do
	addr_var="FLEET_ADDR_$h"
	printf '%s: %s\n' "$h" "$(curl -s "http://${!addr_var}:8080/health")"
done
exit "$status"
