#!/usr/bin/env bash
# A rolling deploy under load on the test fleet: shipit against a bash +
# OpenSSH ControlMaster script doing the same safe rollout, measured
# alternately in the same run.
#
#   bench/fleet.sh [compare] [RUNS]   16 hosts/2 per batch with a 0.1 s login shell,
#                                     the same with none, 64 hosts/8 per batch (0.1 s);
#                                     RUNS (default 3) runs of each tool per case
#   bench/fleet.sh scale [RUNS]       shipit alone at 4, 16, 64 and 200 hosts
#                                     (batches of 2, 2, 8, 25; 0.1 s shell)
#   bench/fleet.sh case HOSTS BATCH DELAY [RUNS] [shipit]   one case
#
# (as root; builds the release binary and the load generator first, and
# measures copies of them.)
#
# Every case brings up its own fleet (tests/fleet/fleet.sh, HAProxy in the
# controller's namespace, checks every 500 ms, rise 2 fall 2), deploys a
# 10 MB release once to start the apps, then measures each run while
# examples/loadgen (the integration tests' load generator) sends 200
# requests/s through HAProxy and counts every failed request.
#
# The script, per run: opens one ControlMaster per host (a child process, so
# its CPU counts), packs the release once, uploads it to every host at once
# (tar through ssh), then per batch and per host in parallel: HAProxy
# `set server app/H state drain`, wait until the server has no session and
# no queued request, switch `current` by rename and restart in one ssh
# command, poll /health every 0.1 s until the new release answers,
# `set server ... state ready`, wait until HAProxy reports it UP; then the
# next batch. At the end it keeps the newest 3 releases and closes the
# masters. shipit does the same and also takes its lock (with heartbeat),
# probes each host, journals before each risky step and appends to
# revisions.log.
#
# Printed per case: median wall time, median controller CPU (user+sys of the
# tool and all its children), peak RSS (the largest single process: for the
# script that is one bash or ssh, for shipit the whole controller), failed
# requests of all runs, and shipit/script. Every run's figures go to
# $BENCH_OUT (default /tmp/shipit-fleetbench.log) as well. BENCH_KEEP=1 keeps
# the work directory (each run's `--json` events and logs) for a post-mortem.
# A run that lost requests also prints the load generator's failures and the
# HAProxy servers with connection or response errors or aborts.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-compare}
shift || true

export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --quiet --bin shipit --example loadgen
fleet_sh=$root/tests/fleet/fleet.sh
out_log=${BENCH_OUT:-/tmp/shipit-fleetbench.log}

work=$(mktemp -d /tmp/shipit-fleetbench.XXXXXX)
# Copies, so a build during the benchmark changes nothing measured.
# SHIPIT_BIN measures another build of shipit (an older commit's, say).
cp "${SHIPIT_BIN:-$root/target/release/shipit}" "$work/shipit"
cp "$root/target/release/examples/loadgen" "$work/loadgen"
shipit=$work/shipit
loadgen=$work/loadgen
current_fleet=""
cleanup() {
	[[ -z $current_fleet ]] || "$fleet_sh" down "$current_fleet" >/dev/null 2>&1 || true
	if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "bench: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The release: the demo app plus 10 MB that does not compress.
mkdir -p "$work/dist"
cp -r demo/app/. "$work/dist/"
head -c 10485760 /dev/urandom >"$work/dist/blob.bin"

# The OpenSSH script. Arguments: fleet env file, project dist, batch size.
cat >"$work/script-deploy.sh" <<'SH'
#!/usr/bin/env bash
set -euo pipefail
. "$1"
dist=$2
batch=$3
d=/srv/bench
tmp=$(mktemp -d /tmp/script-deploy.XXXXXX)
sock=$FLEET_HAPROXY_SOCKET
ssh_() { ssh -F "$FLEET_SSH_CONFIG" -o "ControlPath=$tmp/%h" "$@"; }
hap() { echo "$1" | socat -t 2 stdio "UNIX-CONNECT:$sock"; }
# "qcur+scur status" of app/$1 from `show stat`.
stat_of() { hap "show stat" | awk -F, -v s="$1" '$1 == "app" && $2 == s { print $3 + $5, $18 }'; }

declare -a masters=()
for h in $FLEET_HOSTS; do
	ssh -F "$FLEET_SSH_CONFIG" -o ControlMaster=yes -o "ControlPath=$tmp/%h" -N "$h" &
	masters+=($!)
done
for h in $FLEET_HOSTS; do
	until ssh_ -O check "$h" 2>/dev/null; do sleep 0.02; done
done

set -- $FLEET_HOSTS
newest=$(ssh_ "$1" "ls -1 $d/releases 2>/dev/null | tail -n 1")
r=$(date -u +%Y%m%d%H%M%S)
if [ -n "$newest" ] && [ ! "$newest" \< "$r" ]; then
	r=$(date -u -d "@$(($(date -u -d "${newest:0:8} ${newest:8:2}:${newest:10:2}:${newest:12:2}" +%s) + 1))" +%Y%m%d%H%M%S)
fi
tar -czf "$tmp/release.tgz" -C "$dist" .
for h in $FLEET_HOSTS; do
	ssh_ "$h" "mkdir -p $d/releases/$r $d/shared && tar -xzf - -C $d/releases/$r" <"$tmp/release.tgz" &
done
wait_all() { local p rc=0; for p in "$@"; do wait "$p" || rc=1; done; return $rc; }
# Uploads are the only jobs besides the masters.
for j in $(jobs -p); do
	case " ${masters[*]} " in *" $j "*) ;; *) wait "$j" ;; esac
done

roll() {
	local h=$1 addr_var="FLEET_ADDR_$1" s
	hap "set server app/$h state drain" >/dev/null
	until [ "$(stat_of "$h" | cut -d' ' -f1)" = 0 ]; do sleep 0.1; done
	ssh_ "$h" "ln -sfn $d/releases/$r $d/.current.tmp && mv -fT $d/.current.tmp $d/current && cd $d/current && bin/restart $d" >/dev/null
	until curl -sf --max-time 1 "http://${!addr_var}:8080/health" | grep -q "release=$r"; do sleep 0.1; done
	hap "set server app/$h state ready" >/dev/null
	until s=$(stat_of "$h") && [ "${s#* }" = UP ]; do sleep 0.1; done
}
set -- $FLEET_HOSTS
while [ $# -gt 0 ]; do
	pids=()
	for ((i = 0; i < batch && $# > 0; i++)); do
		roll "$1" &
		pids+=($!)
		shift
	done
	wait_all "${pids[@]}"
done
pids=()
for h in $FLEET_HOSTS; do
	ssh_ "$h" "cd $d/releases && ls -1 | head -n -3 | xargs -r rm -rf" &
	pids+=($!)
done
wait_all "${pids[@]}"
for h in $FLEET_HOSTS; do ssh_ -O exit "$h" 2>/dev/null; done
wait_all "${masters[@]}" || true
rm -rf "$tmp"
SH
chmod +x "$work/script-deploy.sh"

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# Every HAProxy server of the fleet UP (not DRAIN/MAINT/DOWN), within 10 s.
all_up() {
	local i
	for ((i = 0; i < 100; i++)); do
		if ! echo "show stat" | socat -t 2 stdio "UNIX-CONNECT:$FLEET_HAPROXY_SOCKET" |
			awk -F, '$1 == "app" && $2 ~ /^web/ && $18 != "UP" { bad = 1 } END { exit bad }'; then
			sleep 0.1
			continue
		fi
		return 0
	done
	echo "bench: not every server is UP in HAProxy" >&2
	return 1
}

# One measured run of $1 (script|shipit) under load: appends
# "tool wall cpu rss_kb failed total rc" to $work/runs.
measure() { # tool case-dir batch
	local tool=$1 dir=$2 batch=$3 rc=0 wall user sys rss load
	rm -f "$dir/stop"
	"$loadgen" "$FLEET_LB_URL" "$dir/stop" 200 8 >"$dir/load.out" 2>"$dir/load.err" &
	local lpid=$!
	sleep 0.5
	case $tool in
	script) /usr/bin/time -f '%e %U %S %M' -o "$dir/time" "$work/script-deploy.sh" "$FLEET_DIR/fleet.env" "$work/dist" "$batch" >"$dir/$tool.log" 2>&1 || rc=$? ;;
	shipit) (cd "$dir/project" && /usr/bin/time -f '%e %U %S %M' -o "$dir/time" "$shipit" bench deploy --json >"$dir/$tool.json" 2>"$dir/$tool.log") || rc=$? ;;
	esac
	sleep 0.5
	touch "$dir/stop"
	wait "$lpid" || true
	read -r wall user sys rss <"$dir/time" || true
	load=$(cat "$dir/load.out")
	local failed=${load#failed=}
	failed=${failed%% *}
	local total=${load##*total=}
	[[ $rc == 0 ]] || { echo "bench: $tool failed (exit $rc):" >&2; tail -n 20 "$dir/$tool.log" >&2; }
	if [[ $failed != 0 ]]; then
		cat "$dir/load.err" >&2
		# Which servers HAProxy saw fail, and how: connection errors, response
		# errors, aborts by the server or the client (counted since it started).
		echo "show stat" | socat -t 2 stdio "UNIX-CONNECT:$FLEET_HAPROXY_SOCKET" >"$dir/haproxy-stat.$tool.csv" || true
		awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
			$1 == "app" && ($c["econ"] + $c["eresp"] + $c["srv_abrt"] + $c["cli_abrt"] > 0) {
				printf "  haproxy %s/%s: econ %s eresp %s srv_abrt %s cli_abrt %s\n", $1, $2, $c["econ"], $c["eresp"], $c["srv_abrt"], $c["cli_abrt"]
			}' "$dir/haproxy-stat.$tool.csv" >&2 || true
	fi
	all_up || rc=99
	echo "$tool $wall $(echo "$user + $sys" | bc) $rss $failed $total $rc" >>"$dir/runs"
	printf '  %-6s wall %6.2f s  cpu %5.2f s  rss %4d MB  failed %d of %d  exit %d\n' \
		"$tool" "$wall" "$(echo "$user + $sys" | bc)" $((rss / 1024)) "$failed" "$total" "$rc" | tee -a "$out_log"
}

# Summary of one tool's runs: "wall cpu rss_mb failed runs".
summarize() { # runs-file tool
	local f=$1 t=$2
	printf '%s %s %s %s %s' \
		"$(awk -v t="$t" '$1 == t { print $2 }' "$f" | median)" \
		"$(awk -v t="$t" '$1 == t { print $3 }' "$f" | median)" \
		"$(awk -v t="$t" '$1 == t && $4 > m { m = $4 } END { printf "%.0f", m / 1024 }' "$f")" \
		"$(awk -v t="$t" '$1 == t { s += $5 } END { print s + 0 }' "$f")" \
		"$(awk -v t="$t" '$1 == t { n++ } END { print n + 0 }' "$f")"
}

run_case() { # hosts batch delay runs [shipit]
	local hosts=$1 batch=$2 delay=$3 runs=$4 only=${5:-} dir i
	dir="$work/case-$hosts-$batch-$delay"
	mkdir -p "$dir/project"
	current_fleet="$dir/fleet"
	"$fleet_sh" up "$dir/fleet" --hosts "$hosts" --haproxy local --shell-delay "$delay" >/dev/null 2>"$dir/fleet-up.log" ||
		{ cat "$dir/fleet-up.log" >&2; return 1; }
	# shellcheck disable=SC1091
	. "$dir/fleet/fleet.env"
	ln -s "$work/dist" "$dir/project/dist"
	cat >"$dir/project/deploy.toml" <<TOML
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
rolling_batch_size = $batch
[health]
url = "http://{address}:8080/health"
expect_body = "release={release}"
interval = "100ms"
[lb]
driver = "haproxy"
socket = "$FLEET_HAPROXY_SOCKET"
backend = "app"
[stages.bench]
$(grep -v '^#' "$FLEET_DIR/hosts.toml")
TOML
	# Start the apps (nothing measured), so every run replaces a live release.
	(cd "$dir/project" && "$shipit" bench deploy -q) >"$dir/first.log" 2>&1 ||
		{ cat "$dir/first.log" >&2; return 1; }
	all_up
	echo "== $hosts hosts, batches of $batch, shell start-up ${delay}s, $runs runs ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))" | tee -a "$out_log"
	for ((i = 0; i < runs; i++)); do
		# Alternate which tool goes first, so a drift in machine load hits both.
		if [[ $only == shipit ]]; then
			measure shipit "$dir" "$batch"
		elif ((i % 2 == 0)); then
			measure script "$dir" "$batch"
			measure shipit "$dir" "$batch"
		else
			measure shipit "$dir" "$batch"
			measure script "$dir" "$batch"
		fi
	done
	"$fleet_sh" down "$dir/fleet" >/dev/null 2>&1 || true
	current_fleet=""
	local s w
	read -r -a s <<<"$(summarize "$dir/runs" shipit)"
	if [[ $only == shipit ]]; then
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$hosts" "$batch" "$delay" "${s[0]}" "${s[1]}" "${s[2]}" "${s[3]}" >>"$work/table"
	else
		read -r -a w <<<"$(summarize "$dir/runs" script)"
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$hosts" "$batch" "$delay" \
			"${s[0]}" "${w[0]}" "$(echo "scale=2; ${s[0]} / ${w[0]}" | bc)" \
			"${s[1]}" "${w[1]}" "${s[2]}" "${w[2]}" "${s[3]}" "${w[3]}" >>"$work/table"
	fi
}

print_compare() {
	echo
	echo "median of runs; cpu = user+sys of the controller and its children; rss = peak of one process"
	printf '| hosts | batch | shell | shipit | script | ratio | cpu shipit | cpu script | rss shipit | rss script | failed shipit | failed script |\n'
	printf '|---|---|---|---|---|---|---|---|---|---|---|---|\n'
	awk -F'\t' '{ printf "| %s | %s | %s s | %.2f s | %.2f s | **%.2f×** | %.2f s | %.2f s | %s MB | %s MB | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 }' "$work/table"
}

print_scale() {
	echo
	echo "shipit alone, median of runs; 200 requests/s through HAProxy; cpu = user+sys"
	printf '| hosts | batch | shell | wall | cpu | peak rss | failed |\n|---|---|---|---|---|---|---|\n'
	awk -F'\t' '{ printf "| %s | %s | %s s | %.2f s | %.2f s | %s MB | %s |\n", $1, $2, $3, $4, $5, $6, $7 }' "$work/table"
}

echo "# bench/fleet.sh $mode $* at $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD || echo +dirty), $(date -u)" | tee -a "$out_log"
case $mode in
compare)
	runs=${1:-3}
	run_case 16 2 0.1 "$runs"
	run_case 16 2 0 "$runs"
	run_case 64 8 0.1 "$runs"
	print_compare | tee -a "$out_log"
	;;
scale)
	runs=${1:-1}
	for spec in "4 2" "16 2" "64 8" "200 25"; do
		# shellcheck disable=SC2086
		run_case $spec 0.1 "$runs" shipit
	done
	print_scale | tee -a "$out_log"
	;;
case)
	(($# >= 3)) || { echo "usage: bench/fleet.sh case HOSTS BATCH DELAY [RUNS] [shipit]" >&2; exit 2; }
	run_case "$1" "$2" "$3" "${4:-3}" "${5:-}"
	if [[ ${5:-} == shipit ]]; then print_scale; else print_compare; fi | tee -a "$out_log"
	;;
*)
	echo "usage: bench/fleet.sh [compare|scale] [RUNS] | case HOSTS BATCH DELAY [RUNS] [shipit]" >&2
	exit 2
	;;
esac
