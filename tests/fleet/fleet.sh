#!/usr/bin/env bash
# fleet.sh - a fleet of throwaway Linux "hosts" on this one machine, for shipit's tests.
#
# Every host is:
#   * its own network namespace (own eth0 and IP address, lo up, default route),
#   * its own private mount + UTS namespace: its own /srv, `hostname` = its name, an
#     /etc/hosts naming every fleet host, and a resolv.conf without nameservers (the
#     machine's DNS server is unreachable from the fleet network, so lookups fail at
#     once instead of hanging),
#   * its own home for root: DIR/hosts/<name>/home mounted over /root, with its own
#     .bashrc and .profile (the machine's own /root, pyenv and all, is hidden). sshd's
#     bash reads ~/.bashrc for every command; `--shell-delay S` puts a `sleep S` there,
#     the start-up latency of an rbenv/pyenv/nvm line, paid by every SSH command
#     (default 0; `shell-delay` changes it on a running fleet),
#   * a real OpenSSH sshd on port 22 (root, key only, LogLevel VERBOSE),
#   * later, whatever shipit deploys there (the demo app listens on :8080).
#
# A tiny "keeper" process (`sleep infinity`) owns each host's namespaces. sshd, `exec`,
# `fill` and the lb's balancer all enter the keeper's namespaces (rather than sshd's),
# so a host keeps its /srv, its mounts and its running app while sshd is stopped.
#
# Topology for fleet <id> (1..200, allocated atomically so fleets can run in parallel):
#
#   root netns (shipit and the tests) --- bridge sfb<id> 10.201.<id>.1/24
#       |-- sf<id>v<i>  <veth>  eth0 of web<i>   10.201.<id>.(10+i)   (i = 1..200; not with --bastion)
#       |-- sf<id>vlb   <veth>  eth0 of lb       10.201.<id>.5        (--haproxy|nginx|caddy host)
#       `-- sf<id>vb    <veth>  eth0 of bastion  10.201.<id>.250      (--bastion)
#
#   With --bastion the web hosts instead live on a private network 10.202.<id>.0/24:
#   a bridge sfp<id> inside the bastion's netns (bastion = 10.202.<id>.1, web<i> =
#   10.202.<id>.(10+i)). The bastion does not forward packets, so only SSH forwarding
#   (ssh -J) reaches them. The root netns gets an `unreachable` route for that subnet,
#   so a direct connect fails at once with "No route to host" instead of leaking out of
#   the machine's real uplink. An lb host gets a second leg (eth1, 10.202.<id>.5) on
#   the private bridge, like a load balancer in a DMZ. (A local balancer is refused
#   with --bastion: it could not reach the web hosts.)
#
# One load balancer per fleet, `local` (in the root netns on the gateway address
# 10.201.<id>.1, files in DIR) or `host` (on the host `lb`, 10.201.<id>.5, files under
# its /srv = DIR/hosts/lb/srv). Each has its frontend on :8000, balances round robin
# over web1..webN:8080, and never retries a request on another server: a request sent
# to a dead server fails, which is what negative controls measure.
#
# HAProxy (--haproxy local|host): frontend `app` on :8000, backend `app` with servers
# web1..webN on :8080, checks GET /health every 500 ms (fall 2, rise 2), retries 0, no
# redispatch, admin socket (unix, and TCP on :9999, both level admin), stats page on
# :8404. Logs and check transitions go to a ring: "show events fleet" on the socket.
# `up` waits for the first checks, so every server is DOWN until an app runs.
# With --haproxy host it runs on the host `lb`; its admin socket is /srv/haproxy/
# admin.sock there, which is DIR/hosts/lb/srv/haproxy/admin.sock from outside.
# Its stats listener also serves HAProxy's Prometheus exporter on :8404/metrics.
#
# nginx (--nginx local|host), Debian's 1.22: `upstream app { include
# P/upstreams/app.conf; }` where P is DIR/nginx or /srv/nginx on the lb; that file
# (one `server ADDR:8080;` line per web host) is what a deploy tool owns. proxy_next_
# upstream off, nginx's default passive checks (a failed request takes its server out
# for 10 s), no active ones. Run it as `nginx -c P/nginx.conf -e P/error.log` (-t,
# -s reload); pid, logs (access.log names the upstream) and temp files live in P. A
# reload starts new workers; old ones are titled "nginx: worker process is shutting
# down" until their requests finish. All are children of the master.
#
# Caddy (--caddy local|host), Debian's 2.6: JSON config P/caddy.json (P = DIR/caddy or
# /srv/caddy), admin API on <gateway>:2019 (local) or on every address of the lb
# (localhost:2019 there, 10.201.<id>.5:2019 from outside), server `app` on :8000 with
# one reverse_proxy handler `"@id": "app"`: GET/PATCH/POST/DELETE /id/app/upstreams[/N]
# edits its upstreams. Active checks GET /health every 500 ms, no passive ones, no
# retries. GET /reverse_proxy/upstreams shows num_requests (in flight) and fails per
# upstream address, for addresses some handler of the running config still lists.
#
# Prometheus (--prometheus, needs --haproxy): Debian's, in the root netns on
# <gateway>:9090, scraping HAProxy's exporter every second; data in DIR/prometheus.
#
# Scale: up to 200 web hosts. `up` queues the network set-up and runs it with one
# `ip -batch` per namespace, starts keepers and sshds in parallel, and probes logins
# 16 at a time; sshd allows 1000 unauthenticated connections (MaxStartups) so a
# bastion can forward to every host at once; daemons get the hard fd limit as their
# soft one (nginx raises its workers' to 16384). `down` finds a fleet's processes in
# one pass over /proc and deletes its namespaces in one batch. Host keys are cached
# (gen_host_keys): the first fleet with a new host name pays ~0.4 s of CPU for it.
#
# Commands (see usage() below): up, down, gc, exec, sshd, link, fill, unfill, info,
# shell-delay.
#
# Files in DIR (the caller owns DIR; `down` leaves the files there for post-mortems):
#   fleet.id, fleet.env (shell-sourceable summary), hosts.toml, id_ed25519{,.pub},
#   authorized_keys, known_hosts, known_hosts.hashed, ssh_config (`ssh -F DIR/ssh_config
#   web1` works, bastion included), resolv.conf,
#   haproxy.cfg, haproxy.pid, haproxy.sock                 (--haproxy local)
#   nginx/, caddy/                                         (--nginx|--caddy local)
#   prometheus/{prometheus.yml,prometheus.pid,prometheus.log,data/}  (--prometheus)
#   hosts/<name>/{srv/, home/, sshd_config, ssh_host_*_key*, sshd.pid, sshd.log,
#                 etc_hosts, ns.pid (keeper), keeper.log, host.env}
#   hosts/lb/srv/haproxy/{haproxy.cfg,haproxy.pid,admin.sock} (--haproxy host; the lb
#                 itself sees them as /srv/haproxy/...), likewise hosts/lb/srv/nginx/
#                 and hosts/lb/srv/caddy/ for --nginx|--caddy host
#
# Global state in /run/shipit-fleet: <id>/{owner,dir} is the allocation lock; `owner`
# holds "PID STARTTIME" so `gc` can tell a dead owner from a recycled pid. keycache/
# holds generated host keys (see gen_host_keys).
#
# Needs root, iproute2, util-linux (nsenter, unshare, setsid), openssh-server and
# -client, socat; haproxy, nginx, caddy, prometheus (and curl) for those options.

set -euo pipefail

# A predictable PATH: the caller's PATH may put pyenv shims first, and the hosts
# must see the system python3 like a real Debian box would.
readonly CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH="$CLEAN_PATH"

readonly STATE_ROOT=/run/shipit-fleet
readonly KEY_CACHE=$STATE_ROOT/keycache
readonly MAX_ID=200
readonly SSHD_BIN=/usr/sbin/sshd
readonly HAPROXY_BIN=/usr/sbin/haproxy
readonly NGINX_BIN=/usr/sbin/nginx
readonly CADDY_BIN=/usr/bin/caddy
readonly PROMETHEUS_BIN=/usr/bin/prometheus
readonly LB_PORT=8000           # every load balancer's frontend
readonly CADDY_ADMIN_PORT=2019  # Caddy's admin API (its usual port)
readonly PROMETHEUS_PORT=9090
readonly SFTP_SERVER=/usr/lib/openssh/sftp-server
readonly READY_TIMEOUT=10 # seconds every sshd gets to accept a real login
readonly APP_PORT=8080     # where the demo app listens; HAProxy checks this port

# Where the --haproxy host admin socket lives inside the lb host. It sits under the lb's
# /srv, which is DIR/hosts/lb/srv on the real filesystem, so tests reach the very same
# socket from the root namespace without entering the lb. nginx and Caddy on the lb
# keep their files in /srv/nginx and /srv/caddy the same way.
readonly LB_HAPROXY_DIR=/srv/haproxy

prog=${0##*/}

usage() {
	cat <<EOF
usage:
  $prog up DIR --hosts N [--haproxy|--nginx|--caddy none|local|host]
          [--prometheus] [--bastion] [--shell-delay SECONDS]
          [--owner PID] [--gc-removes-dir]
  $prog down DIR
  $prog gc
  $prog exec DIR HOST -- CMD [ARGS...]
  $prog sshd DIR HOST stop [--keep-sessions] | start
  $prog link DIR HOST down|up
  $prog fill DIR HOST PATH SIZE
  $prog unfill DIR HOST PATH
  $prog info DIR
  $prog shell-delay DIR HOST|all SECONDS

Set FLEET_VERBOSE=1 to log each step of 'up' with timestamps.
EOF
}

die() {
	printf '%s: error: %s\n' "$prog" "$*" >&2
	exit 1
}

warn() {
	printf '%s: warning: %s\n' "$prog" "$*" >&2
}

T0=${EPOCHREALTIME/./}
vlog() {
	if [[ ${FLEET_VERBOSE:-0} == 1 ]]; then
		local now=${EPOCHREALTIME/./}
		printf '%s: [%5d ms] %s\n' "$prog" $(((now - T0) / 1000)) "$*" >&2
	fi
}

# `ip` in the root netns when $1 is empty, else `ip -n $1`.
ipn() {
	local ns=$1
	shift
	if [[ -z $ns ]]; then
		ip "$@"
	else
		ip -n "$ns" "$@"
	fi
}

# Milliseconds since the epoch, for bounded polling loops.
now_ms() {
	local t=${EPOCHREALTIME/./}
	echo $((t / 1000))
}

# "STARTTIME" of a pid (field 22 of /proc/PID/stat), empty if the pid is gone.
# The comm field may contain spaces and parentheses, so cut after the last ')'.
proc_starttime() {
	local stat rest
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	rest=${stat##*) }
	local -a f
	read -r -a f <<<"$rest"
	echo "${f[19]:-}"
}

owner_alive() { # "PID STARTTIME"
	local pid start
	read -r pid start <<<"$1"
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -n $start && "$(proc_starttime "$pid")" == "$start" ]]
}

# ---------------------------------------------------------------------------------
# Teardown. Everything is found by name (sf<id>-*, sf<id>v*, sfb<id>), so it works
# after a crash, a half-finished `up`, or with DIR already deleted.
# ---------------------------------------------------------------------------------

fleet_netns() { # id -> names of this fleet's namespaces
	ip netns list 2>/dev/null | awk -v p="sf$1-" 'index($1, p) == 1 { print $1 }'
}

# Pids of every process in any of the given namespaces, in one pass over /proc (`ip
# netns pids` scans all of /proc once per namespace: 200 scans for 200 hosts).
# Zombies have no namespaces left and are not listed.
netns_pids() { # netns...
	local inodes
	(($# > 0)) || return 0
	inodes=$(cd /run/netns && stat -L -c %i -- "$@" 2>/dev/null | tr '\n' ' ') || true
	[[ -n $inodes ]] || return 0
	find /proc/[0-9]*/ns/net -maxdepth 0 -printf '%l %p\n' 2>/dev/null | awk -v want="$inodes" '
		BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) ok["net:[" w[i] "]"] = 1 }
		$1 in ok { split($2, p, "/"); print p[3] }'
}

kill_netns_pids() { # netns...
	local i pids
	# SIGKILL in a loop: a listener may fork a child between listing and killing.
	for ((i = 0; i < 100; i++)); do
		pids=$(netns_pids "$@")
		[[ -z $pids ]] && return 0
		# shellcheck disable=SC2086 # word splitting of the pid list is intended
		kill -KILL $pids 2>/dev/null || true
		sleep 0.02
	done
	warn "processes in the fleet's namespaces survive SIGKILL: $(netns_pids "$@" | tr '\n' ' ')"
	return 1
}

# Pids of the daemons a fleet runs in the root netns (a local HAProxy, nginx or Caddy,
# and Prometheus): processes of those binaries whose command line names a path in DIR.
# Matching both the binary and DIR means an unrelated haproxy, a recycled pid, or an
# `ssh -F DIR/ssh_config` is never touched. Their children (nginx workers, whose titles
# name nothing) are found by kill_local_daemons. Daemons on the lb host die with its
# namespace instead.
local_daemon_pids() { # dir
	local dir=$1 pid cmd
	find /proc/[0-9]*/exe -maxdepth 0 -printf '%l %p\n' 2>/dev/null |
		awk -v bins="$HAPROXY_BIN $NGINX_BIN $CADDY_BIN $PROMETHEUS_BIN" '
			BEGIN { n = split(bins, b, " "); for (i = 1; i <= n; i++) ok[b[i]] = 1 }
			$1 in ok { split($2, p, "/"); print p[3] }' |
		while read -r pid; do
			cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
			if [[ " $cmd" == *[\ =]"$dir/"* ]]; then
				echo "$pid"
			fi
		done
}

# Remove every resource of fleet <id>. Does not release the id (the caller does that
# last, so nobody can reuse the id while its resources still exist).
teardown_resources() { # id [dir]
	local id=$1 dir=${2:-} ns link ok=0 pids i
	local -a nss
	mapfile -t nss < <(fleet_netns "$id")
	if ((${#nss[@]} > 0)); then
		kill_netns_pids "${nss[@]}" || ok=1
		printf 'netns del %s\n' "${nss[@]}" | ip -force -batch - >/dev/null 2>&1 || true
		for ns in $(fleet_netns "$id"); do
			warn "cannot delete netns $ns"
			ok=1
		done
	fi
	if [[ -n $dir ]]; then
		for ((i = 0; i < 50; i++)); do
			pids=$(local_daemon_pids "$dir")
			[[ -z $pids ]] && break
			# Stopped first, so an nginx master cannot fork a new worker to replace
			# one killed before it (that worker would outlive it, orphaned).
			# shellcheck disable=SC2086
			kill -STOP $pids 2>/dev/null || true
			# shellcheck disable=SC2086
			kill -KILL $pids $(for p in $pids; do pgrep -P "$p"; done) 2>/dev/null || true
			sleep 0.02
		done
		pids=$(local_daemon_pids "$dir")
		[[ -z $pids ]] || { warn "daemons of $dir survive: $(echo $pids)"; ok=1; }
	fi
	# veth peers vanish with their namespace; this catches a half-created pair and the bridge.
	for link in $(ip -o link show 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
		if [[ $link == "sfb$id" || $link == "sf${id}v"* ]]; then
			# A veth may vanish on its own meanwhile (netns cleanup is asynchronous).
			if ! ip link del "$link" 2>/dev/null && ip link show "$link" >/dev/null 2>&1; then
				warn "cannot delete link $link"
				ok=1
			fi
		fi
	done
	ip route del unreachable "10.202.$id.0/24" 2>/dev/null || true
	return "$ok"
}

# Tear down fleet <id> and release the id. Idempotent.
teardown_id() { # id [dir]
	local id=$1 dir=${2:-}
	if teardown_resources "$id" "$dir"; then
		rm -rf "${STATE_ROOT:?}/$id"
	else
		warn "fleet $id not fully torn down; keeping $STATE_ROOT/$id so the id is not reused"
		return 1
	fi
}

# ---------------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------------

UP_ID=""
UP_DONE=0
UP_DIR=""

on_up_exit() {
	local rc=$?
	if ((rc != 0)) && [[ -n $UP_ID ]] && ((UP_DONE == 0)); then
		# Background jobs (key generation, login probes) must not outlive us.
		local j
		for j in $(jobs -p); do kill "$j" 2>/dev/null || true; done
		printf '%s: up failed (exit %d); tearing down fleet %s\n' "$prog" "$rc" "$UP_ID" >&2
		teardown_id "$UP_ID" "$UP_DIR" || true
		rm -f "$UP_DIR/fleet.id"
	fi
	return "$rc"
}

allocate_id() { # dir owner -> sets UP_ID
	local dir=$1 owner=$2 id
	mkdir -p "$STATE_ROOT"
	for ((id = 1; id <= MAX_ID; id++)); do
		mkdir "$STATE_ROOT/$id" 2>/dev/null || continue
		# The id is ours. Leftovers of an earlier crashed `down` may still carry its
		# names; they are orphans now (no lock dir), so clear them first.
		if ! teardown_resources "$id" 2>/dev/null; then
			rmdir "$STATE_ROOT/$id"
			continue
		fi
		# Someone else (not shipit) may use this subnet; skip it rather than fight.
		if [[ -n $(ip -4 -o addr show to "10.201.$id.0/24") || -n $(ip -4 -o addr show to "10.202.$id.0/24") ]]; then
			rmdir "$STATE_ROOT/$id"
			continue
		fi
		echo "$owner $(proc_starttime "$owner")" >"$STATE_ROOT/$id/owner"
		echo "$dir" >"$STATE_ROOT/$id/dir"
		UP_ID=$id
		return 0
	done
	return 1
}

write_sshd_config() { # hostdir
	local d=$1
	cat >"$d/sshd_config" <<EOF
# sshd for fleet host $(basename "$d"); generated by fleet.sh.
ListenAddress 0.0.0.0
Port 22
HostKey $d/ssh_host_ed25519_key
HostKey $d/ssh_host_rsa_key
PidFile $d/sshd.pid
# No PAM: no systemd/logind here, and PAM would only slow sessions down.
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $UP_DIR/authorized_keys
# DIR usually lives under /tmp (world-writable), which StrictModes would reject.
StrictModes no
UseDNS no
PrintMotd no
LogLevel VERBOSE
# Needed on the bastion for ssh -J; harmless elsewhere.
AllowTcpForwarding yes
# The bastion forwards one connection per host: with 200 hosts at once, the default
# 10:30:100 would drop most of them while they authenticate.
MaxStartups 1000
Subsystem sftp $SFTP_SERVER
EOF
}

# The keeper: enters the host's netns, makes private mount + UTS namespaces, mounts
# the host's /srv, its own home over /root, its own /etc/hosts (every fleet host by name)
# and a resolv.conf without nameservers (the machine's DNS server is unreachable from
# the fleet network; without this every lookup would hang for seconds instead of
# failing at once), records its pid, then sleeps forever.
# shellcheck disable=SC2016 # expanded by the inner sh, not here
readonly KEEPER_SCRIPT='set -e
hostname "$1"
mount --bind "$2" /srv
mount --bind "$3" /root
mount --bind "$5" /etc/hosts
mount --bind "$6" /etc/resolv.conf
cd /root
echo $$ >"$4.tmp"
mv "$4.tmp" "$4"
exec sleep infinity'

# Root's home on a host: DIR/hosts/<name>/home, mounted over /root in the host's mount
# namespace, so ~ (history, ~/.ssh, whatever a deploy leaves there) is private to the
# host, as on a separate machine. Its .bashrc is read by sshd's bash for EVERY command,
# also non-interactive ones (bash does that when sshd runs it). A shell delay > 0 puts
# a sleep there: the start-up cost of an `eval "$(rbenv init -)"` / pyenv / nvm line,
# paid per SSH command. `fleet.sh exec` starts no shell, so it never pays it.
# The home directory itself exists already (mode 700; `up` makes them all at once).
# Builtins only: at 200 hosts every fork here costs a second.
write_home() { # dir name delay-seconds
	local home="$1/hosts/$2/home"
	[[ -e $home/.profile ]] || printf '%s\n' \
		'# ~/.profile: executed by Bourne-compatible login shells (as on Debian).' \
		'if [ "$BASH" ]; then' '  if [ -f ~/.bashrc ]; then' '    . ~/.bashrc' '  fi' 'fi' \
		'mesg n 2> /dev/null || true' >"$home/.profile"
	bashrc_text "$2" "$3" >"$home/.bashrc"
}

bashrc_text() { # name delay-seconds
	echo "# ~/.bashrc of root on $1; generated by fleet.sh. sshd's bash reads it for"
	echo "# every command, interactive or not."
	if [[ $2 != 0 ]]; then
		echo "# Shell start-up latency (fleet.sh --shell-delay), like an rbenv/pyenv/nvm line:"
		echo "sleep $2"
	fi
}

# Replaces a running host's .bashrc atomically: an SSH command starting meanwhile
# reads the old or the new one, never half of one.
write_bashrc() { # file name delay-seconds
	bashrc_text "$2" "$3" >"$1.tmp"
	mv "$1.tmp" "$1"
}

# A shell delay: plain decimal seconds below 60 ("0", "0.1", "2.5").
valid_delay() {
	[[ $1 =~ ^[0-9]{1,2}(\.[0-9]+)?$ ]] && ((10#${1%%.*} < 60))
}

start_keeper() { # name
	local name=$1 d="$UP_DIR/hosts/$1"
	[[ ! -e $d/ns.pid ]] || rm -f "$d/ns.pid"
	# setsid: a Ctrl-C aimed at the caller must not take the fleet down with it.
	setsid env -i PATH="$CLEAN_PATH" ip netns exec "sf$UP_ID-$name" \
		unshare --mount --uts --propagation private -- \
		sh -c "$KEEPER_SCRIPT" keeper "$name" "$d/srv" "$d/home" "$d/ns.pid" \
		"$d/etc_hosts" "$UP_DIR/resolv.conf" \
		</dev/null >/dev/null 2>>"$d/keeper.log" &
}


# Network set-up is batched: create_host_net only queues `ip` commands, net_apply runs
# them with one `ip -batch` per namespace (root first, then the others in the order
# they were first named, so the bastion's private bridge exists before web hosts'
# veths are plugged into it). Seven `ip` runs per host cost ~75 ms a host; a batch
# costs ~1 ms a host, which is what makes 200 hosts start in seconds.
NET_ROOT=""
declare -A NET_NS=()
declare -a NET_ORDER=()

net_q() { # ns line  (ns "" = the root netns)
	if [[ -z $1 ]]; then
		NET_ROOT+="$2"$'\n'
	else
		[[ -v NET_NS[$1] ]] || NET_ORDER+=("$1")
		NET_NS[$1]+="$2"$'\n'
	fi
}

net_apply() {
	local ns err
	if [[ -n $NET_ROOT ]]; then
		err=$(ip -batch - <<<"$NET_ROOT" 2>&1) || die "network set-up failed: $err"
	fi
	for ns in "${NET_ORDER[@]}"; do
		err=$(ip -n "$ns" -batch - <<<"${NET_NS[$ns]}" 2>&1) || die "network set-up of $ns failed: $err"
	done
	NET_ROOT="" NET_NS=() NET_ORDER=()
}

# Queue netns + veths for one host. Each link is "linkns:ifname:bridge:addr/len:peer-if"
# (linkns empty = root netns); the first link carries the default route via gw and
# its address is the host's SSH address.
create_host_net() { # name gw link...
	local name=$1 gw=$2 ns spec lns lif br addr pif links="" host_addr=""
	shift 2
	ns="sf$UP_ID-$name"
	net_q "" "netns add $ns"
	net_q "$ns" "link set lo up"
	for spec in "$@"; do
		IFS=: read -r lns lif br addr pif <<<"$spec"
		net_q "$lns" "link add $lif type veth peer name $pif netns $ns"
		net_q "$lns" "link set $lif master $br up"
		net_q "$ns" "addr add $addr dev $pif"
		net_q "$ns" "link set $pif up"
		if [[ -z $host_addr ]]; then
			net_q "$ns" "route add default via $gw"
			host_addr=${addr%/*}
		fi
		links+="${lns:--}:$lif "
	done
	printf "HOST_NAME='%s'\nHOST_NS='%s'\nHOST_ADDR='%s'\nHOST_LINKS='%s'\n" \
		"$name" "$ns" "$host_addr" "${links% }" >"$UP_DIR/hosts/$name/host.env"
}

# Host keys. RSA-3072 generation costs ~0.4 s of CPU per host, which dominated `up`
# on 2 cores, so generated keys are cached per host name in $KEY_CACHE and copied.
# Hosts within one fleet still all have different keys; the same name in two fleets
# shares keys, which is harmless because their addresses differ. FLEET_FRESH_KEYS=1
# bypasses the cache.
gen_host_keys() { # name
	local name=$1 d="$UP_DIR/hosts/$1" c="$KEY_CACHE/$1" tmp
	if [[ ${FLEET_FRESH_KEYS:-0} != 1 && -s $c/ssh_host_rsa_key.pub ]]; then
		cp -p "$c"/ssh_host_* "$d/"
		return 0
	fi
	ssh-keygen -q -t ed25519 -N '' -C "root@$name" -f "$d/ssh_host_ed25519_key" &&
		ssh-keygen -q -t rsa -b 3072 -N '' -C "root@$name" -f "$d/ssh_host_rsa_key" || return 1
	[[ ${FLEET_FRESH_KEYS:-0} == 1 ]] && return 0
	# Publish atomically: a concurrent `up` either sees a complete set or none.
	mkdir -p "$KEY_CACHE"
	tmp=$(mktemp -d "$KEY_CACHE/.new.XXXXXX")
	cp -p "$d"/ssh_host_* "$tmp/"
	mv -T "$tmp" "$c" 2>/dev/null || rm -rf "$tmp"
}

start_sshd() { # dir name [keeper-pid]  (works for up and for `sshd start`)
	local dir=$1 name=$2 d kpid=${3:-}
	d="$dir/hosts/$name"
	# `up` passes the pid of the keeper it just started; otherwise check it.
	[[ -n $kpid ]] || kpid=$(keeper_pid "$dir" "$name")
	[[ ! -e $d/sshd.pid ]] || rm -f "$d/sshd.pid"
	# sshd re-execs itself per connection, hence the absolute -f. It daemonizes, so
	# nsenter returns as soon as the config and host keys have been checked.
	if ! env -i PATH="$CLEAN_PATH" nsenter -t "$kpid" -m -n -u -- \
		"$SSHD_BIN" -f "$d/sshd_config" -E "$d/sshd.log" </dev/null >/dev/null 2>>"$d/sshd.stderr"; then
		echo "--- $d/sshd.log and sshd.stderr" >&2
		tail -n 20 "$d/sshd.log" "$d/sshd.stderr" >&2 || true
		die "host $name: sshd failed to start"
	fi
}

ssh_probe() { # dir addr [jump-addr]
	local dir=$1 addr=$2 jump=${3:-}
	# curve25519: OpenSSH 9's default sntrup761 key exchange costs the client ~50 ms
	# of CPU per login, which is most of the cost of probing 200 hosts.
	local -a o=(-F "$dir/ssh_config" -o ConnectTimeout=2 -o KexAlgorithms=curve25519-sha256)
	[[ -n $jump ]] && o+=(-J "root@$jump")
	ssh "${o[@]}" "root@$addr" true </dev/null
}

# Poll until a real key login works (bounded). On failure, show why.
wait_ssh() { # dir name addr [jump-addr]
	local dir=$1 name=$2 addr=$3 jump=${4:-} deadline err
	deadline=$(($(now_ms) + READY_TIMEOUT * 1000))
	while true; do
		if err=$(ssh_probe "$dir" "$addr" "$jump" 2>&1); then
			return 0
		fi
		# $$ is the main script even in this background subshell: if it was killed,
		# stop polling instead of lingering for the full timeout.
		kill -0 "$$" 2>/dev/null || return 1
		if (($(now_ms) > deadline)); then
			{
				echo "--- host $name ($addr${jump:+ via bastion $jump}): last ssh error:"
				echo "$err"
				echo "--- $dir/hosts/$name/sshd.log (tail):"
				tail -n 30 "$dir/hosts/$name/sshd.log" 2>/dev/null || echo "(no log)"
			} >&2
			return 1
		fi
		sleep 0.05
	done
}

# Run wait_ssh for several hosts, PROBE_JOBS at a time (all at once, 200 logins on 2
# cores time each other out); fail naming every host that failed.
readonly PROBE_JOBS=16
wait_ssh_all() { # dir jump name=addr...
	local dir=$1 jump=$2 spec failed="" pid rc
	shift 2
	local -A names_of=()
	reap_one() {
		rc=0
		wait -n -p pid "${!names_of[@]}" || rc=$?
		if [[ -n ${pid:-} && -v names_of[$pid] ]]; then
			((rc == 0)) || failed+=" ${names_of[$pid]}"
			unset "names_of[$pid]"
		fi
	}
	for spec in "$@"; do
		while ((${#names_of[@]} >= PROBE_JOBS)); do reap_one; done
		wait_ssh "$dir" "${spec%%=*}" "${spec#*=}" "$jump" &
		names_of[$!]=${spec%%=*}
	done
	while ((${#names_of[@]} > 0)); do reap_one; done
	[[ -z $failed ]] || die "sshd not accepting logins within ${READY_TIMEOUT}s on:$failed"
}

write_haproxy_config() { # file bind-addr sock-path web-prefix
	local file=$1 bind=$2 sock=$3 prefix=$4 i
	{
		cat <<EOF
# HAProxy for shipit fleet $UP_ID; generated by fleet.sh.
#
# Health checks: GET /health every 500 ms; 2 failures mark a server DOWN, 2 successes
# mark it UP. A dead app leaves rotation within ~1 s and a fresh one joins within ~1 s:
# fast enough for tests, slow enough not to flap on one slow answer.
# retries 0 and no "option redispatch": a request sent to a dying server fails
# visibly instead of being quietly retried elsewhere, so tests see real drops.

global
    # A stale HAProxy of a crashed fleet must make this one fail to bind, loudly,
    # not silently share the listening port with it through SO_REUSEPORT.
    noreuseport
    stats socket $sock mode 600 level admin
    stats socket ipv4@$bind:9999 level admin
    stats timeout 30s
    # No syslog here: logs and check state changes go to a ring buffer; read it with
    # "show events fleet" on the admin socket.
    log ring@fleet local0 info

ring fleet
    format iso
    maxlen 1024
    size 65536

defaults
    mode http
    log global
    option httplog
    option log-health-checks
    retries 0
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 1s

frontend app
    bind $bind:8000
    default_backend app

backend app
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
EOF
		for ((i = 1; i <= HOSTS; i++)); do
			printf '    server web%d %s.%d:%d check\n' "$i" "$prefix" $((10 + i)) "$APP_PORT"
		done
		cat <<EOF

# The stats page, and HAProxy's built-in Prometheus exporter on /metrics (what
# --prometheus scrapes, e.g. haproxy_server_http_responses_total{proxy="app"}).
listen stats
    bind $bind:8404
    http-request use-service prometheus-exporter if { path /metrics }
    stats enable
    stats uri /
    stats refresh 2s
EOF
	} >"$file"
}

# Wait until HAProxy answers on its admin socket and has run its first checks (servers
# start UP in HAProxy 2.6 and drop to DOWN at the first failed check; waiting makes
# the state a test sees right after `up` deterministic: DOWN until the app runs).
wait_haproxy() { # sock
	local sock=$1 deadline out
	deadline=$(($(now_ms) + 5000))
	while true; do
		out=$(echo "show servers state app" | socat -t 2 stdio "UNIX-CONNECT:$sock" 2>/dev/null || true)
		# Data lines: be_id be_name srv_id srv_name srv_addr srv_op_state ...; 0 = DOWN.
		if [[ -n $out ]] && ! awk '$2 == "app" && $6 != 0 { bad = 1 } END { exit !bad }' <<<"$out" &&
			grep -q '^[0-9]* app ' <<<"$out"; then
			return 0
		fi
		if (($(now_ms) > deadline)); then
			[[ -n $out ]] || die "haproxy: admin socket $sock does not answer"
			warn "haproxy: servers not all DOWN after 5 s (something already listens on :$APP_PORT?)"
			return 0
		fi
		sleep 0.05
	done
}

# The web servers as ADDR:PORT, one per line.
web_servers() { # web-prefix
	local i
	for ((i = 1; i <= HOSTS; i++)); do
		echo "$1.$((10 + i)):$APP_PORT"
	done
}

# LB_PRE: the command prefix that runs a command where a load balancer lives: here
# (local), or in the lb host's namespaces (host), with a clean environment either way.
LB_PRE=()
lb_prefix() { # dir at
	LB_PRE=(env -i PATH="$CLEAN_PATH")
	if [[ $2 == host ]]; then
		LB_PRE+=(nsenter -t "$(keeper_pid "$1" lb)" -m -n -u --)
	fi
}

# Polls until a TCP port accepts connections (from the root netns).
wait_port() { # addr port what
	local deadline
	deadline=$(($(now_ms) + 10000))
	until timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; do
		(($(now_ms) < deadline)) || die "$3 does not accept connections on $1:$2 within 10 s"
		sleep 0.05
	done
}

# nginx (--nginx): the layout a deploy tool driving nginx expects. P is the directory
# as nginx sees it (DIR/nginx, or /srv/nginx on the lb):
#   P/nginx.conf, P/upstreams/app.conf (the server list, owned by the deploy tool),
#   P/nginx.pid, P/error.log, P/access.log (with the upstream that answered), P/tmp/.
# Invoke it as `nginx -c P/nginx.conf -e P/error.log` (plus -t, -s reload): -e keeps it
# away from the machine's /var/log/nginx even before it has read its config.
write_nginx_config() { # realdir P bind web-prefix
	local real=$1 p=$2 bind=$3 prefix=$4 srv
	mkdir -p "$real/upstreams" "$real/tmp"
	for srv in $(web_servers "$prefix"); do
		echo "server $srv;"
	done >"$real/upstreams/app.conf"
	cat >"$real/nginx.conf" <<EOF
# nginx for shipit fleet $UP_ID; generated by fleet.sh.
#
# upstream app takes its servers from upstreams/app.conf, one "server ADDR:PORT;" line
# per web host: the file a deploy tool owns and edits. proxy_next_upstream off: a
# request sent to a dead server fails visibly instead of being retried on another
# (like HAProxy's retries 0), so tests see real drops. No active health checks (open
# source nginx has none); passive ones as nginx ships them: a failed request takes its
# server out of rotation for 10 s (max_fails=1 fail_timeout=10s). Reload gracefully with
#   nginx -c $p/nginx.conf -e $p/error.log -s reload
# Workers of the old generation finish their requests, titled "nginx: worker process
# is shutting down" (ps, /proc/PID/cmdline), then exit; all are children of the master
# (pid in $p/nginx.pid).
worker_processes 2;
worker_rlimit_nofile 16384;
pid $p/nginx.pid;
error_log $p/error.log info;
events {
    worker_connections 4096;
}
http {
    log_format upstream '\$time_iso8601 \$remote_addr "\$request" \$status upstream=\$upstream_addr pid=\$pid rt=\$request_time';
    access_log $p/access.log upstream;
    client_body_temp_path $p/tmp/body;
    proxy_temp_path $p/tmp/proxy;
    fastcgi_temp_path $p/tmp/fastcgi;
    uwsgi_temp_path $p/tmp/uwsgi;
    scgi_temp_path $p/tmp/scgi;

    upstream app {
        include $p/upstreams/app.conf;
    }

    server {
        listen $bind:$LB_PORT;
        location / {
            proxy_pass http://app;
            proxy_next_upstream off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
        }
    }
}
EOF
}

start_nginx() { # dir at realdir P bind
	local dir=$1 at=$2 real=$3 p=$4 bind=$5 deadline
	command -v "$NGINX_BIN" >/dev/null || die "missing $NGINX_BIN (apt-get install -y nginx)"
	rm -f "$real/nginx.pid"
	lb_prefix "$dir" "$at"
	"${LB_PRE[@]}" "$NGINX_BIN" -c "$p/nginx.conf" -e "$p/error.log" \
		</dev/null >"$real/start.log" 2>&1 || {
		cat "$real/start.log" "$real/error.log" >&2 2>/dev/null
		die "nginx failed to start (config $real/nginx.conf)"
	}
	deadline=$(($(now_ms) + 5000))
	until [[ -s $real/nginx.pid ]]; do
		(($(now_ms) < deadline)) || die "nginx wrote no pid file $real/nginx.pid"
		sleep 0.02
	done
	wait_port "$bind" "$LB_PORT" nginx
}

# Caddy (--caddy): JSON config P/caddy.json, admin API on ADMIN (see cmd_up), a server
# "app" on :8000 whose only route is a reverse_proxy handler with "@id": "app", so
# GET/PATCH/POST/DELETE /id/app/upstreams[/N] edits its upstream list in place.
# Round robin, no retries (try_duration 0: a request sent to a dead upstream fails),
# active health checks GET /health every 500 ms (an upstream leaves selection at its
# first failed check), no passive ones. Log P/caddy.log; nothing persisted (no
# autosave): the config file is the start state every time.
write_caddy_config() { # realdir P bind admin origins web-prefix
	local real=$1 p=$2 bind=$3 admin=$4 origins=$5 prefix=$6 srv ups="" orig=""
	mkdir -p "$real/data" "$real/config"
	for srv in $(web_servers "$prefix"); do
		ups+="${ups:+, }{\"dial\": \"$srv\"}"
	done
	for srv in $origins; do
		orig+="${orig:+, }\"$srv\""
	done
	[[ -z $orig ]] || orig=$'\n'"    \"origins\": [$orig],"
	cat >"$real/caddy.json" <<EOF
{
  "admin": {
    "listen": "$admin",$orig
    "config": {"persist": false}
  },
  "logging": {"logs": {"default": {"level": "INFO",
    "writer": {"output": "file", "filename": "$p/caddy.log"}}}},
  "storage": {"module": "file_system", "root": "$p/data"},
  "apps": {"http": {"servers": {"app": {
    "listen": ["$bind:$LB_PORT"],
    "automatic_https": {"disable": true},
    "routes": [{"handle": [{
      "@id": "app",
      "handler": "reverse_proxy",
      "upstreams": [$ups],
      "load_balancing": {"selection_policy": {"policy": "round_robin"}},
      "health_checks": {"active": {"uri": "/health", "interval": "500ms", "timeout": "1s"}}
    }]}]
  }}}}
}
EOF
}

start_caddy() { # dir at realdir P bind admin-url
	local dir=$1 at=$2 real=$3 p=$4 bind=$5 url=$6 deadline
	command -v "$CADDY_BIN" >/dev/null || die "missing $CADDY_BIN (apt-get install -y caddy)"
	command -v curl >/dev/null || die "missing curl (apt-get install -y curl)"
	rm -f "$real/caddy.pid"
	# `caddy run` stays in the foreground; setsid detaches it from us and our caller.
	lb_prefix "$dir" "$at"
	setsid "${LB_PRE[@]}" env HOME="$p" XDG_DATA_HOME="$p/data" XDG_CONFIG_HOME="$p/config" \
		"$CADDY_BIN" run --config "$p/caddy.json" --pidfile "$p/caddy.pid" \
		</dev/null >"$real/caddy.out" 2>&1 &
	deadline=$(($(now_ms) + 10000))
	until [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url/config/" 2>/dev/null) == 200 ]]; do
		if (($(now_ms) > deadline)); then
			tail -n 20 "$real/caddy.out" "$real/caddy.log" >&2 2>/dev/null || true
			die "caddy's admin API $url does not answer within 10 s"
		fi
		sleep 0.05
	done
	wait_port "$bind" "$LB_PORT" caddy
}

# Prometheus (--prometheus), in the root netns on the gateway address: scrapes HAProxy's
# exporter every second, keeps its data in DIR/prometheus/data.
start_prometheus() { # dir bind target
	local dir=$1 bind=$2 target=$3 real="$1/prometheus" deadline
	command -v "$PROMETHEUS_BIN" >/dev/null || die "missing $PROMETHEUS_BIN (apt-get install -y prometheus)"
	command -v curl >/dev/null || die "missing curl (apt-get install -y curl)"
	mkdir -p "$real/data"
	cat >"$real/prometheus.yml" <<EOF
# Prometheus for shipit fleet $UP_ID; generated by fleet.sh.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: haproxy
    metrics_path: /metrics
    static_configs:
      - targets: ['$target']
EOF
	setsid env -i PATH="$CLEAN_PATH" "$PROMETHEUS_BIN" --config.file="$real/prometheus.yml" \
		--storage.tsdb.path="$real/data" --storage.tsdb.retention.time=1d \
		--web.listen-address="$bind:$PROMETHEUS_PORT" --log.level=warn \
		</dev/null >"$real/prometheus.log" 2>&1 &
	echo $! >"$real/prometheus.pid"
	deadline=$(($(now_ms) + 30000))
	until [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://$bind:$PROMETHEUS_PORT/-/ready" 2>/dev/null) == 200 ]]; do
		if (($(now_ms) > deadline)); then
			tail -n 20 "$real/prometheus.log" >&2 || true
			die "prometheus is not ready on $bind:$PROMETHEUS_PORT within 30 s"
		fi
		sleep 0.1
	done
}

cmd_up() {
	local dir="" owner=$PPID haproxy=none bastion=0 gc_rm=0 prometheus=0
	# The load balancer: its kind (none|haproxy|nginx|caddy) and where it runs.
	local lb_kind=none lb_at="" lb_flags=0 opt
	HOSTS=0 SHELL_DELAY=0
	[[ $# -ge 1 ]] || {
		usage >&2
		exit 2
	}
	dir=$1
	shift
	while [[ $# -gt 0 ]]; do
		case $1 in
		--hosts) HOSTS=${2:?--hosts needs a number}; shift 2 ;;
		--haproxy | --nginx | --caddy)
			opt=${1#--}
			[[ ${2:-} =~ ^(none|local|host)$ ]] || die "$1 needs none, local or host"
			lb_flags=$((lb_flags + 1))
			[[ $2 == none ]] || lb_kind=$opt lb_at=$2
			shift 2
			;;
		--prometheus) prometheus=1; shift ;;
		--bastion) bastion=1; shift ;;
		--shell-delay) SHELL_DELAY=${2:?--shell-delay needs seconds}; shift 2 ;;
		--owner) owner=${2:?--owner needs a pid}; shift 2 ;;
		--gc-removes-dir) gc_rm=1; shift ;;
		*) die "up: unknown option $1" ;;
		esac
	done
	if ! [[ $HOSTS =~ ^[0-9]+$ ]] || ((HOSTS < 1 || HOSTS > 200)); then
		die "--hosts must be 1..200"
	fi
	((lb_flags <= 1)) || die "one load balancer per fleet: give only one of --haproxy, --nginx, --caddy"
	[[ $lb_kind == haproxy ]] && haproxy=$lb_at
	((prometheus == 0)) || [[ $lb_kind == haproxy ]] ||
		die "--prometheus scrapes HAProxy's exporter: it needs --haproxy local|host"
	valid_delay "$SHELL_DELAY" || die "--shell-delay must be seconds below 60, like 0.1: $SHELL_DELAY"
	[[ $owner =~ ^[0-9]+$ && -d /proc/$owner ]] || die "--owner $owner is not a running pid"
	if ((bastion)) && [[ $lb_at == local ]]; then
		die "--$lb_kind local cannot reach web hosts hidden behind --bastion; use --$lb_kind host"
	fi
	((EUID == 0)) || die "must run as root (network and mount namespaces)"
	# Daemons started here (sshd, balancers, Prometheus) inherit the soft fd limit; a
	# CI machine's 1024 is tight for a balancer in front of 200 hosts under load.
	ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
	local t
	for t in ip nsenter unshare setsid ssh ssh-keygen socat "$SSHD_BIN" "$SFTP_SERVER"; do
		command -v "$t" >/dev/null || die "missing $t (apt-get install -y openssh-server openssh-client iproute2 util-linux socat)"
	done
	[[ $haproxy == none ]] || command -v "$HAPROXY_BIN" >/dev/null || die "missing $HAPROXY_BIN (apt-get install -y haproxy)"

	mkdir -p "$dir"
	dir=$(realpath "$dir")
	# Paths end up unquoted in sshd/haproxy configs and in fleet.env.
	[[ $dir =~ ^[A-Za-z0-9._/+-]+$ ]] || die "DIR must match [A-Za-z0-9._/+-]+: $dir"
	((${#dir} + 32 < 108)) || die "DIR too long for unix socket paths: $dir"
	# Hosts mount their own /srv and /root over these; sshd on a host reads DIR.
	case $dir/ in
	/root/* | /srv/*) die "DIR must not be under /root or /srv (hosts mount their own there): $dir" ;;
	esac
	local old
	if old=$(fleet_id_of "$dir"); then
		die "$dir already holds running fleet $old; run '$prog down $dir' first"
	fi
	rm -f "$dir/fleet.id" # stale: that fleet is gone
	UP_DIR=$dir

	trap on_up_exit EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	trap 'exit 129' HUP

	allocate_id "$dir" "$owner" || die "no free fleet id in 1..$MAX_ID (try '$prog gc')"
	# DIR is a throwaway temp dir of the owner (the Rust tests): once the owner is
	# dead, `gc` may delete it too, so crashed runs do not pile up uploads in /tmp.
	((gc_rm == 0)) || : >"$STATE_ROOT/$UP_ID/gc-removes-dir"
	local id=$UP_ID
	echo "$id" >"$dir/fleet.id"
	vlog "allocated fleet $id"

	local net="10.201.$id" priv="10.202.$id"
	local web_net=$net web_gw="$net.1"
	((bastion)) && web_net=$priv web_gw="$priv.1"

	# --- names of every host with an sshd, and its (SSH) address
	local -a names=() addrs=()
	local i
	for ((i = 1; i <= HOSTS; i++)); do
		names+=("web$i")
		addrs+=("$web_net.$((10 + i))")
	done
	[[ $lb_at == host ]] && names+=(lb) addrs+=("$net.5")
	((bastion)) && names+=(bastion) addrs+=("$net.250")

	# --- files: keys first (in the background: RSA keygen is the slowest step)
	mkdir -p /run/sshd /srv
	local -a keyjobs=()
	local n
	local -a hostdirs=()
	for n in "${names[@]}"; do hostdirs+=("$dir/hosts/$n"); done
	mkdir -p "${hostdirs[@]/%//srv}"
	mkdir -p -m 700 "${hostdirs[@]/%//home}"
	local -a old_keys
	for n in "${names[@]}"; do
		write_home "$dir" "$n" "$SHELL_DELAY"
		old_keys=("$dir/hosts/$n"/ssh_host_*)
		[[ ! -e ${old_keys[0]} ]] || rm -f "${old_keys[@]}"
		if [[ ${FLEET_FRESH_KEYS:-0} != 1 && -s $KEY_CACHE/$n/ssh_host_rsa_key.pub ]]; then
			cp -p "$KEY_CACHE/$n"/ssh_host_* "$dir/hosts/$n/" # cheaper than a job
		else
			gen_host_keys "$n" &
			keyjobs+=($!)
		fi
	done
	rm -f "$dir/id_ed25519" "$dir/id_ed25519.pub"
	ssh-keygen -q -t ed25519 -N '' -C "shipit-fleet-$id" -f "$dir/id_ed25519"
	cp "$dir/id_ed25519.pub" "$dir/authorized_keys"

	vlog "files written"
	# --- network
	net_q "" "link add sfb$id type bridge"
	net_q "" "addr add $net.1/24 dev sfb$id"
	net_q "" "link set sfb$id up"
	if ((bastion)); then
		# No route to the private subnet from here, immediately and by design.
		net_q "" "route add unreachable $priv.0/24"
		create_host_net bastion "$net.1" ":sf${id}vb:sfb$id:$net.250/24:eth0"
		net_q "sf$id-bastion" "link add sfp$id type bridge"
		net_q "sf$id-bastion" "addr add $priv.1/24 dev sfp$id"
		net_q "sf$id-bastion" "link set sfp$id up"
	fi
	local linkns="" bridge="sfb$id"
	((bastion)) && linkns="sf$id-bastion" bridge="sfp$id"
	for ((i = 1; i <= HOSTS; i++)); do
		create_host_net "web$i" "$web_gw" "$linkns:sf${id}v$i:$bridge:$web_net.$((10 + i))/24:eth0"
	done
	if [[ $lb_at == host ]]; then
		if ((bastion)); then
			create_host_net lb "$net.1" ":sf${id}vlb:sfb$id:$net.5/24:eth0" \
				"sf$id-bastion:sf${id}vlp:sfp$id:$priv.5/24:eth1"
		else
			create_host_net lb "$net.1" ":sf${id}vlb:sfb$id:$net.5/24:eth0"
		fi
	fi
	vlog "network queued"
	net_apply
	vlog "network created"

	echo "# fleet host: no DNS server reachable; names are in /etc/hosts" >"$dir/resolv.conf"
	local all_hosts=""
	for i in "${!names[@]}"; do
		all_hosts+="${addrs[$i]}"$'\t'"${names[$i]}"$'\n'
	done
	for n in "${names[@]}"; do
		printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n%s' \
			"$n" "$all_hosts" >"$dir/hosts/$n/etc_hosts"
		start_keeper "$n"
	done

	# --- known_hosts, ssh_config (needs the host keys)
	for i in "${keyjobs[@]}"; do
		wait "$i" || die "ssh-keygen failed for a host key (see above)"
	done
	vlog "host keys generated"
	: >"$dir/known_hosts"
	for i in "${!names[@]}"; do
		n=${names[$i]}
		awk -v a="${addrs[$i]}" '{ print a, $1, $2 }' \
			"$dir/hosts/$n/ssh_host_ed25519_key.pub" "$dir/hosts/$n/ssh_host_rsa_key.pub" >>"$dir/known_hosts"
		write_sshd_config "$dir/hosts/$n"
	done
	cp "$dir/known_hosts" "$dir/known_hosts.hashed"
	ssh-keygen -q -H -f "$dir/known_hosts.hashed" >/dev/null 2>&1 || die "ssh-keygen -H failed"
	rm -f "$dir/known_hosts.hashed.old"
	{
		echo "# ssh -F $dir/ssh_config web1   (generated by fleet.sh for fleet $id)"
		for i in "${!names[@]}"; do
			printf 'Host %s\n    HostName %s\n' "${names[$i]}" "${addrs[$i]}"
			if ((bastion)) && [[ ${names[$i]} == web* ]]; then
				printf '    ProxyJump root@%s\n' "$net.250"
			fi
		done
		if ((bastion)); then
			# By address, too, as shipit's hosts.toml names them.
			printf 'Host %s.*\n    ProxyJump root@%s\n' "$priv" "$net.250"
		fi
		cat <<EOF
Host *
    User root
    IdentityFile $dir/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $dir/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 3
    LogLevel ERROR
EOF
	} >"$dir/ssh_config"

	# --- keepers up? then sshd
	local deadline
	deadline=$(($(now_ms) + 5000))
	for n in "${names[@]}"; do
		while [[ ! -s $dir/hosts/$n/ns.pid ]]; do
			if (($(now_ms) > deadline)); then
				cat "$dir/hosts/$n/keeper.log" >&2 2>/dev/null || true
				die "host $n: namespace keeper did not start (mount --bind of /srv failed?)"
			fi
			sleep 0.005
		done
	done
	vlog "keepers running"
	# In parallel: each start costs ~35 ms, mostly waiting for sshd to daemonize.
	local -A sshd_jobs=()
	local kpid
	for n in "${names[@]}"; do
		read -r kpid <"$dir/hosts/$n/ns.pid"
		start_sshd "$dir" "$n" "$kpid" &
		sshd_jobs[$n]=$!
	done
	local failed=""
	for n in "${!sshd_jobs[@]}"; do
		wait "${sshd_jobs[$n]}" || failed+=" $n"
	done
	[[ -z $failed ]] || die "sshd failed to start on:$failed"
	vlog "sshd started"

	# --- haproxy
	local lb_url="" hap_sock="" hap_admin="" lb_addr=""
	case $haproxy in
	local)
		write_haproxy_config "$dir/haproxy.cfg" "$net.1" "$dir/haproxy.sock" "$web_net"
		env -i PATH="$CLEAN_PATH" "$HAPROXY_BIN" -D -f "$dir/haproxy.cfg" -p "$dir/haproxy.pid" \
			</dev/null >"$dir/haproxy.log" 2>&1 || {
			cat "$dir/haproxy.log" >&2
			die "haproxy failed to start (config $dir/haproxy.cfg)"
		}
		lb_url="http://$net.1:8000" hap_sock="$dir/haproxy.sock" hap_admin="$net.1:9999"
		;;
	host)
		local lbsrv="$dir/hosts/lb/srv/haproxy"
		mkdir -p "$lbsrv"
		write_haproxy_config "$lbsrv/haproxy.cfg" "$net.5" "$LB_HAPROXY_DIR/admin.sock" "$web_net"
		local lbpid
		lbpid=$(keeper_pid "$dir" lb)
		env -i PATH="$CLEAN_PATH" nsenter -t "$lbpid" -m -n -u -- \
			"$HAPROXY_BIN" -D -f "$LB_HAPROXY_DIR/haproxy.cfg" -p "$LB_HAPROXY_DIR/haproxy.pid" \
			</dev/null >"$lbsrv/haproxy.log" 2>&1 || {
			cat "$lbsrv/haproxy.log" >&2
			die "host lb: haproxy failed to start (config $lbsrv/haproxy.cfg)"
		}
		lb_url="http://$net.5:8000" hap_sock="$lbsrv/admin.sock" hap_admin="$net.5:9999" lb_addr="$net.5"
		;;
	esac

	# --- nginx or Caddy: files under P, as the balancer sees it (DIR/<kind> here, or
	# /srv/<kind> on the lb, which is DIR/hosts/lb/srv/<kind> from here).
	local lb_bind="$net.1" lb_real="$dir/$lb_kind" lb_p="$dir/$lb_kind"
	if [[ $lb_at == host ]]; then
		lb_bind="$net.5" lb_real="$dir/hosts/lb/srv/$lb_kind" lb_p="/srv/$lb_kind" lb_addr="$net.5"
	fi
	local nginx_cmd="" nginx_upstreams="" caddy_admin=""
	case $lb_kind in
	nginx)
		write_nginx_config "$lb_real" "$lb_p" "$lb_bind" "$web_net"
		start_nginx "$dir" "$lb_at" "$lb_real" "$lb_p" "$lb_bind"
		lb_url="http://$lb_bind:$LB_PORT"
		nginx_cmd="nginx -c $lb_p/nginx.conf -e $lb_p/error.log"
		nginx_upstreams="$lb_p/upstreams/app.conf"
		;;
	caddy)
		# Here: on the gateway address (the port is free there, unlike on 127.0.0.1,
		# which parallel fleets share). On the lb: on every address, so it is both
		# `localhost:2019` on the lb (Caddy's default) and LB:2019 from outside.
		caddy_admin="$lb_bind:$CADDY_ADMIN_PORT"
		if [[ $lb_at == host ]]; then
			write_caddy_config "$lb_real" "$lb_p" "$lb_bind" "0.0.0.0:$CADDY_ADMIN_PORT" \
				"localhost:$CADDY_ADMIN_PORT 127.0.0.1:$CADDY_ADMIN_PORT $caddy_admin" "$web_net"
		else
			write_caddy_config "$lb_real" "$lb_p" "$lb_bind" "$caddy_admin" "" "$web_net"
		fi
		start_caddy "$dir" "$lb_at" "$lb_real" "$lb_p" "$lb_bind" "http://$caddy_admin"
		lb_url="http://$lb_bind:$LB_PORT"
		;;
	esac
	[[ $lb_kind == none || $lb_kind == haproxy ]] || vlog "$lb_kind started"

	# --- readiness: real logins (the bastion first when web hosts hide behind it)
	local -a direct=() hidden=()
	for i in "${!names[@]}"; do
		if ((bastion)) && [[ ${names[$i]} == web* ]]; then
			hidden+=("${names[$i]}=${addrs[$i]}")
		else
			direct+=("${names[$i]}=${addrs[$i]}")
		fi
	done
	wait_ssh_all "$dir" "" "${direct[@]}"
	vlog "direct logins ok"
	if ((bastion)); then
		wait_ssh_all "$dir" "$net.250" "${hidden[@]}"
		vlog "logins via bastion (ssh -J) ok"
		# The point of a bastion: no direct path. Fail loudly if there is one.
		if timeout 2 bash -c "exec 3<>/dev/tcp/$priv.11/22" 2>/dev/null; then
			die "web1 ($priv.11) is reachable directly from the root netns; bastion isolation broken"
		fi
	fi

	# Hosts must reach each other through the bridge (br_netfilter + a DROP policy in
	# FORWARD, as Docker installs, would silently break this).
	if ((HOSTS >= 2)); then
		if ! ip netns exec "sf$id-web$HOSTS" timeout 2 bash -c "exec 3<>/dev/tcp/$web_net.11/22" 2>/dev/null; then
			die "web$HOSTS cannot reach web1:22 through the bridge (iptables FORWARD drop with bridge-nf-call-iptables=1?)"
		fi
	fi

	[[ -z $hap_sock ]] || wait_haproxy "$hap_sock"
	vlog "load balancer ready"
	local prom_url=""
	if ((prometheus)); then
		start_prometheus "$dir" "$net.1" "${hap_admin%:*}:8404"
		prom_url="http://$net.1:$PROMETHEUS_PORT"
		vlog "prometheus ready"
	fi

	# --- fleet.env and hosts.toml
	local web_list="" ssh_list="${names[*]}" priv_subnet="" bastion_addr="" hap_backend="" hap_sock_on_lb=""
	if ((bastion)); then
		priv_subnet="$priv.0/24" bastion_addr="$net.250"
	fi
	[[ $haproxy == none ]] || hap_backend=app
	[[ $haproxy != host ]] || hap_sock_on_lb="$LB_HAPROXY_DIR/admin.sock"
	for ((i = 1; i <= HOSTS; i++)); do web_list+="web$i "; done
	{
		echo "# fleet $id; generated by fleet.sh. Shell-sourceable."
		echo "FLEET_ID='$id'"
		echo "FLEET_DIR='$dir'"
		echo "FLEET_SUBNET='$net.0/24'"
		echo "FLEET_GATEWAY='$net.1'"
		echo "FLEET_PRIVATE_SUBNET='$priv_subnet'"
		echo "FLEET_HOSTS='${web_list% }'"
		echo "FLEET_SSH_HOSTS='$ssh_list'"
		for i in "${!names[@]}"; do
			echo "FLEET_ADDR_${names[$i]}='${addrs[$i]}'"
		done
		echo "FLEET_IDENTITY='$dir/id_ed25519'"
		echo "FLEET_KNOWN_HOSTS='$dir/known_hosts'"
		echo "FLEET_KNOWN_HOSTS_HASHED='$dir/known_hosts.hashed'"
		echo "FLEET_SSH_CONFIG='$dir/ssh_config'"
		echo "FLEET_APP_PORT='$APP_PORT'"
		echo "FLEET_SHELL_DELAY='$SHELL_DELAY'"
		echo "FLEET_LB='$lb_kind'"
		echo "FLEET_LB_AT='$lb_at'"
		echo "FLEET_HAPROXY='$haproxy'"
		echo "FLEET_LB_URL='$lb_url'"
		echo "FLEET_LB_ADDR='$lb_addr'"
		echo "FLEET_HAPROXY_SOCKET='$hap_sock'"
		echo "FLEET_HAPROXY_SOCKET_ON_LB='$hap_sock_on_lb'"
		echo "FLEET_HAPROXY_ADMIN_TCP='$hap_admin'"
		echo "FLEET_HAPROXY_STATS_URL='${hap_admin:+http://${hap_admin%:*}:8404/}'"
		echo "FLEET_HAPROXY_BACKEND='$hap_backend'"
		echo "FLEET_NGINX_CMD='$nginx_cmd'"
		echo "FLEET_NGINX_UPSTREAM_FILE='$nginx_upstreams'"
		echo "FLEET_NGINX_DIR='${nginx_cmd:+$lb_real}'"
		echo "FLEET_CADDY_ADMIN='$caddy_admin'"
		echo "FLEET_CADDY_ROUTE_ID='${caddy_admin:+app}'"
		echo "FLEET_CADDY_DIR='${caddy_admin:+$lb_real}'"
		echo "FLEET_PROMETHEUS_URL='$prom_url'"
		echo "FLEET_BASTION_ADDR='$bastion_addr'"
	} >"$dir/fleet.env"
	{
		echo "# fleet $id; generated by fleet.sh"
		echo "hosts = ["
		for ((i = 1; i <= HOSTS; i++)); do
			printf '  { name = "web%d", address = "%s.%d" },\n' "$i" "$web_net" $((10 + i))
		done
		echo "]"
	} >"$dir/hosts.toml"

	UP_DONE=1
	local took=$((($(now_ms) * 1000 - T0) / 1000))
	printf '%s: fleet %s up in %d ms: %s\n' "$prog" "$id" "$took" "$ssh_list" >&2
}

# ---------------------------------------------------------------------------------
# helpers for commands on a running fleet
# ---------------------------------------------------------------------------------

fleet_id_of() { # dir -> id, only if the lock dir still names this DIR
	local dir=$1 id
	[[ -r $dir/fleet.id ]] || return 1
	id=$(cat "$dir/fleet.id")
	[[ $id =~ ^[0-9]+$ && "$(cat "$STATE_ROOT/$id/dir" 2>/dev/null)" == "$dir" ]] || return 1
	echo "$id"
}

load_host() { # dir name -> HOST_* vars
	local dir=$1 name=$2
	[[ -r $dir/hosts/$name/host.env ]] || die "no host '$name' in fleet $dir"
	# shellcheck source=/dev/null
	. "$dir/hosts/$name/host.env"
}

# Set by load_host from hosts/<name>/host.env.
HOST_NS="" HOST_ADDR="" HOST_LINKS=""

# Pid of the process owning the host's namespaces, checked against the host's netns
# so a recycled pid is never entered.
keeper_pid() { # dir name
	local dir=$1 name=$2 pid ns
	pid=$(cat "$dir/hosts/$name/ns.pid" 2>/dev/null) || die "host $name: no keeper pid (fleet not up?)"
	ns=$(awk -F"'" '/^HOST_NS=/ { print $2 }' "$dir/hosts/$name/host.env" 2>/dev/null || true)
	if [[ -z $ns ]] || [[ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" != "net:[$(stat -L -c %i "/run/netns/$ns" 2>/dev/null)]" ]]; then
		die "host $name: keeper process $pid is gone (fleet torn down?)"
	fi
	echo "$pid"
}

resolve_dir() { # dir -> absolute dir (must exist)
	[[ -d $1 ]] || die "no such fleet dir: $1"
	realpath "$1"
}

cmd_down() {
	[[ $# -eq 1 ]] || die "usage: $prog down DIR"
	local dir id rc=0
	dir=$(realpath -m "$1")
	if id=$(fleet_id_of "$dir"); then
		teardown_id "$id" "$dir" || rc=1
	else
		# fleet.id missing (up died before writing it?): look for a lock naming DIR.
		local f
		for f in "$STATE_ROOT"/*/dir; do
			[[ -r $f && "$(cat "$f")" == "$dir" ]] || continue
			id=$(basename "$(dirname "$f")")
			teardown_id "$id" "$dir" || rc=1
		done
	fi
	((rc == 0)) && rm -f "$dir/fleet.id"
	return "$rc"
}

cmd_gc() {
	local d id owner dir rc=0 age
	for d in "$STATE_ROOT"/*/; do
		[[ -d $d ]] || continue
		id=$(basename "$d")
		[[ $id =~ ^[0-9]+$ ]] || continue
		owner=$(cat "$d/owner" 2>/dev/null || true)
		dir=$(cat "$d/dir" 2>/dev/null || true)
		if [[ -z $owner ]]; then
			# Being created right now, or up died in the instant before writing it.
			age=$(($(date +%s) - $(stat -c %Y "$d")))
			((age > 60)) || continue
		elif owner_alive "$owner"; then
			continue
		fi
		echo "$prog: gc: fleet $id (dir ${dir:-?}, owner ${owner%% *} gone)" >&2
		local rm_dir=0
		[[ -e $d/gc-removes-dir ]] && rm_dir=1
		if ! teardown_id "$id" "$dir"; then
			rc=1
			continue
		fi
		if [[ -n $dir && -d $dir && "$(cat "$dir/fleet.id" 2>/dev/null)" == "$id" ]]; then
			if ((rm_dir)); then
				rm -rf -- "$dir"
			else
				rm -f "$dir/fleet.id"
			fi
		fi
	done
	# Orphans: resources whose lock dir is gone (a `down` killed midway). Take the lock
	# ourselves first, so we never race a concurrent `up` that just got that id.
	local ids
	ids=$({
		ip netns list 2>/dev/null | sed -n 's/^sf\([0-9]\+\)-.*/\1/p'
		ip -o link show 2>/dev/null | sed -n 's/^[0-9]*: sfb\([0-9]\+\)[:@].*/\1/p'
	} | sort -un)
	for id in $ids; do
		mkdir "$STATE_ROOT/$id" 2>/dev/null || continue
		echo "$prog: gc: orphaned resources of fleet $id" >&2
		teardown_id "$id" || rc=1
	done
	return "$rc"
}

cmd_exec() {
	[[ $# -ge 4 && $3 == -- ]] || die "usage: $prog exec DIR HOST -- CMD [ARGS...]"
	local dir name kpid
	dir=$(resolve_dir "$1")
	name=$2
	shift 3
	load_host "$dir" "$name"
	kpid=$(keeper_pid "$dir" "$name")
	# A login-like environment, as if run by root over SSH on that host.
	exec env -i PATH="$CLEAN_PATH" HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 \
		nsenter -t "$kpid" -m -n -u -w -- "$@"
}

# sshd processes (listener and per-connection children) in a host's netns.
host_sshd_pids() { # ns
	local p
	for p in $(ip netns pids "$1" 2>/dev/null); do
		[[ "$(readlink "/proc/$p/exe" 2>/dev/null)" == "$SSHD_BIN" ]] && echo "$p"
	done
	return 0
}

cmd_sshd() {
	[[ $# -ge 3 ]] || die "usage: $prog sshd DIR HOST stop [--keep-sessions]|start"
	local dir name action pid pids i
	dir=$(resolve_dir "$1")
	name=$2
	action=$3
	load_host "$dir" "$name"
	case $action in
	stop)
		# Default: kill the listener AND every session, like a crashed sshd or a host
		# losing SSH; processes started from sessions (the app) keep running.
		# --keep-sessions kills only the listener, like `systemctl stop ssh` on Debian.
		pid=$(cat "$dir/hosts/$name/sshd.pid" 2>/dev/null || true)
		if [[ ${4:-} == --keep-sessions ]]; then
			[[ -n $pid ]] && grep -qx "$pid" <<<"$(host_sshd_pids "$HOST_NS")" && kill -TERM "$pid"
			# Not `kill -0`: the daemonized listener stays a zombie until init reaps it,
			# and init here reaps lazily. host_sshd_pids skips zombies.
			for ((i = 0; i < 100; i++)); do
				grep -qx "$pid" <<<"$(host_sshd_pids "$HOST_NS")" || break
				sleep 0.02
			done
		else
			for ((i = 0; i < 100; i++)); do
				pids=$(host_sshd_pids "$HOST_NS")
				[[ -z $pids ]] && break
				# shellcheck disable=SC2086
				kill -KILL $pids 2>/dev/null || true
				sleep 0.02
			done
			[[ -z $(host_sshd_pids "$HOST_NS") ]] || die "host $name: sshd processes survive SIGKILL"
		fi
		rm -f "$dir/hosts/$name/sshd.pid"
		;;
	start)
		pid=$(cat "$dir/hosts/$name/sshd.pid" 2>/dev/null || true)
		if [[ -n $pid ]] && grep -qx "$pid" <<<"$(host_sshd_pids "$HOST_NS")"; then
			return 0 # already running
		fi
		start_sshd "$dir" "$name"
		local jump=""
		if [[ $name == web* ]]; then
			jump=$(sed -n "s/^FLEET_BASTION_ADDR='\(.*\)'$/\1/p" "$dir/fleet.env" 2>/dev/null || true)
		fi
		wait_ssh "$dir" "$name" "$HOST_ADDR" "$jump" || die "host $name: sshd restarted but logins fail"
		;;
	*) die "sshd: action must be stop or start" ;;
	esac
}

cmd_link() {
	[[ $# -eq 3 && $3 =~ ^(up|down)$ ]] || die "usage: $prog link DIR HOST down|up"
	local dir name state l lns lif
	dir=$(resolve_dir "$1")
	name=$2
	state=$3
	load_host "$dir" "$name"
	# Down the bridge-side end: the host sees NO-CARRIER and packets to it go nowhere.
	for l in $HOST_LINKS; do
		lns=${l%%:*} lif=${l#*:}
		[[ $lns == - ]] && lns=""
		ipn "$lns" link set "$lif" "$state" || die "host $name: cannot set $lif $state"
	done
}

cmd_fill() {
	[[ $# -eq 4 ]] || die "usage: $prog fill DIR HOST PATH SIZE"
	local dir name path size
	dir=$(resolve_dir "$1")
	name=$2 path=$3 size=$4
	[[ $path == /* ]] || die "fill: PATH must be absolute"
	[[ $size =~ ^[0-9]+[kKmMgG]?$ ]] || die "fill: SIZE like 2m or 512k"
	load_host "$dir" "$name"
	local kpid
	kpid=$(keeper_pid "$dir" "$name")
	# A tiny tmpfs replaces PATH, pre-loaded with what PATH held, so the host's files
	# stay visible but the "disk" under PATH is SIZE big. Only this host sees it.
	# shellcheck disable=SC2016
	env -i PATH="$CLEAN_PATH" nsenter -t "$kpid" -m -- sh -c '
		set -e
		mkdir -p "$1"
		tmp=$(mktemp -d /tmp/fleet-fill.XXXXXX)
		mount -t tmpfs -o "size=$2,mode=755" fleet-fill "$tmp"
		if ! cp -a "$1/." "$tmp/"; then
			umount "$tmp"; rmdir "$tmp"
			echo "contents of $1 do not fit in $2" >&2; exit 1
		fi
		mount --move "$tmp" "$1"
		rmdir "$tmp"' fill "$path" "$size" || die "host $name: fill $path $size failed"
}

cmd_unfill() {
	[[ $# -eq 3 ]] || die "usage: $prog unfill DIR HOST PATH"
	local dir kpid
	dir=$(resolve_dir "$1")
	load_host "$dir" "$2"
	kpid=$(keeper_pid "$dir" "$2")
	# Contents written while filled are lost; the original directory reappears.
	env -i PATH="$CLEAN_PATH" nsenter -t "$kpid" -m -- umount -l "$3" ||
		die "host $2: unfill $3 failed"
}

cmd_shell_delay() {
	[[ $# -eq 3 ]] || die "usage: $prog shell-delay DIR HOST|all SECONDS"
	local dir n
	dir=$(resolve_dir "$1")
	valid_delay "$3" || die "shell-delay: SECONDS must be below 60, like 0.1: $3"
	if [[ $2 == all ]]; then
		for n in "$dir"/hosts/*/home; do
			n=${n%/home}
			write_bashrc "$n/home/.bashrc" "${n##*/}" "$3"
		done
	else
		[[ -d $dir/hosts/$2/home ]] || die "no host '$2' in fleet $dir"
		write_bashrc "$dir/hosts/$2/home/.bashrc" "$2" "$3"
	fi
}

cmd_info() {
	[[ $# -eq 1 ]] || die "usage: $prog info DIR"
	cat "$1/fleet.env"
}

main() {
	[[ $# -ge 1 ]] || {
		usage >&2
		exit 2
	}
	local cmd=$1
	shift
	case $cmd in
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	gc) cmd_gc "$@" ;;
	exec) cmd_exec "$@" ;;
	sshd) cmd_sshd "$@" ;;
	link) cmd_link "$@" ;;
	fill) cmd_fill "$@" ;;
	unfill) cmd_unfill "$@" ;;
	info) cmd_info "$@" ;;
	shell-delay) cmd_shell_delay "$@" ;;
	-h | --help | help) usage ;;
	*)
		usage >&2
		exit 2
		;;
	esac
}

main "$@"
