//! A fleet of throwaway Linux hosts for integration tests, driven through
//! `tests/fleet/fleet.sh` (see the comment at its top for the topology).
//!
//! Each host has its own network namespace and address, its own `/srv`, its own
//! hostname and a real OpenSSH sshd on port 22 that accepts `root` with
//! [`Fleet::identity`]. The machine running the tests sits on the fleet's bridge and
//! reaches every host directly (except web hosts hidden behind a bastion).
//!
//! Needs root. A fleet that cannot start makes the test panic (fail), never skip.
//! Dropping the [`Fleet`] tears it down, also while unwinding from a failed
//! assertion; set `SHIPIT_FLEET_KEEP=1` to keep a fleet and its directory for
//! debugging (`fleet.sh gc` removes it once the test process is gone).
#![allow(dead_code)] // each test uses a different part of this toolbox

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where HAProxy runs, if anywhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Haproxy {
    /// No load balancer.
    #[default]
    None,
    /// HAProxy in the test machine's own network namespace, frontend on the fleet
    /// gateway address port 8000, admin socket in the fleet directory.
    Local,
    /// HAProxy on an extra SSH-reachable host `lb` (`.5`), admin socket at
    /// `/srv/haproxy/admin.sock` on that host.
    Host,
}

/// The original three knobs, kept exactly as they were so that tests written with
/// a struct literal (`FleetOptions { hosts, haproxy, bastion }`) compile unchanged.
/// Converts into a [`FleetSpec`], which has every knob.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Number of web hosts, named `web1..webN`.
    pub hosts: usize,
    pub haproxy: Haproxy,
    /// Add a host `bastion` and hide the web hosts behind it: only `ssh -J` (or any
    /// other SSH forwarding through the bastion) reaches them.
    pub bastion: bool,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            hosts: 1,
            haproxy: Haproxy::None,
            bastion: false,
        }
    }
}

/// Where a load balancer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// In the test machine's own network namespace, on the fleet gateway address;
    /// its files live in the fleet directory.
    Local,
    /// On an extra SSH-reachable host `lb` (`.5`); its files live under the lb's /srv.
    Host,
}

/// The load balancer in front of the web hosts, frontend on port 8000 in every case
/// ([`Fleet::lb_url`]). None of them retries a request on another server, so a
/// request sent to a dead one fails (what negative controls rely on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lb {
    #[default]
    None,
    /// Backend `app`, checks GET /health every 500 ms, admin socket
    /// ([`Fleet::haproxy_socket`]), Prometheus exporter on :8404/metrics.
    Haproxy(At),
    /// Debian's nginx: `upstream app` includes [`Fleet::nginx_upstream_file`] (one
    /// `server ADDR:8080;` line per web host), `proxy_next_upstream off`, graceful
    /// reloads ([`Fleet::nginx_reload`]), no active health checks.
    Nginx(At),
    /// Debian's Caddy 2.6: a reverse_proxy handler with `"@id": "app"` whose
    /// upstreams the admin API edits ([`Fleet::caddy_admin_url`]), active checks
    /// GET /health every 500 ms, no retries.
    Caddy(At),
}

/// Everything `fleet.sh up` can build. Write new tests as
/// `Fleet::start(FleetSpec { hosts: 3, shell_delay: ..., ..Default::default() })`.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// Number of web hosts, named `web1..webN` (1..=200).
    pub hosts: usize,
    pub lb: Lb,
    /// Add a host `bastion` and hide the web hosts behind it.
    pub bastion: bool,
    /// What every SSH command pays for its login shell to start (a sleep in each
    /// host's private ~/.bashrc, like an rbenv/pyenv/nvm line). Zero by default: the
    /// integration tests keep it so, to keep CI time down. Must be below 60 s.
    pub shell_delay: Duration,
    /// Run Prometheus (Debian's), scraping HAProxy's exporter every second; needs
    /// `Lb::Haproxy`. See [`Fleet::prometheus_url`].
    pub prometheus: bool,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetOptions::default().into()
    }
}

impl From<FleetOptions> for FleetSpec {
    fn from(o: FleetOptions) -> Self {
        FleetSpec {
            hosts: o.hosts,
            lb: match o.haproxy {
                Haproxy::None => Lb::None,
                Haproxy::Local => Lb::Haproxy(At::Local),
                Haproxy::Host => Lb::Haproxy(At::Host),
            },
            bastion: o.bastion,
            shell_delay: Duration::ZERO,
            prometheus: false,
        }
    }
}

/// Seconds as fleet.sh takes them: "0", "0.1", "2.5".
fn seconds_arg(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// A web host: its name and the address shipit should connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetHost {
    pub name: String,
    pub address: String,
}

pub struct Fleet {
    /// `None` only after `SHIPIT_FLEET_KEEP` handed the directory over.
    tmp: Option<TempDir>,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    spec: FleetSpec,
}

/// Path of `fleet.sh` in this checkout.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fleet/fleet.sh")
}

/// Path of the demo app in this checkout.
pub fn demo_app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/app")
}

fn fleet_sh() -> Command {
    // Through bash, so a checkout that lost the executable bit still works.
    let mut cmd = Command::new("bash");
    cmd.arg(script());
    cmd
}

fn run(mut cmd: Command, what: &str) -> Output {
    cmd.stdin(Stdio::null());
    cmd.output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `check` every 50 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET url` over HTTP/1.0 with short timeouts. `None` if the server cannot be reached
/// or answers garbage; otherwise the status code and the body.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    http_request("GET", url, None)
}

/// `METHOD url` over HTTP/1.0 (one request per connection, so no chunked answers)
/// with short timeouts, and a JSON `body` if given. `None` if the server cannot be
/// reached or answers garbage; otherwise the status code and the body.
pub fn http_request(method: &str, url: &str, body: Option<&str>) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = if authority.contains(':') {
        authority.to_socket_addrs().ok()?.next()?
    } else {
        (authority, 80).to_socket_addrs().ok()?.next()?
    };
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let mut request =
        format!("{method} {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: shipit-tests\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or_default());
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((status, body.to_string()))
}

/// Percent-encodes a URL query value (RFC 3986 unreserved characters pass).
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A worker process of the fleet's nginx (a child of its master).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxWorker {
    pub pid: u32,
    /// Titled "nginx: worker process is shutting down": a worker of an older
    /// generation, finishing the requests it holds after a reload.
    pub shutting_down: bool,
}

/// Caddy's view of one upstream (`GET /reverse_proxy/upstreams` on the admin API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaddyUpstream {
    pub address: String,
    /// Requests in flight to it right now, in any config generation, for as long
    /// as some handler of the running config still lists the address.
    pub num_requests: u64,
    pub fails: u64,
}

static GC: Once = Once::new();

impl Fleet {
    /// Starts a fleet (from a [`FleetSpec`] or the older [`FleetOptions`]). Panics
    /// with fleet.sh's full output if it cannot.
    pub fn start(spec: impl Into<FleetSpec>) -> Fleet {
        let opts: FleetSpec = spec.into();
        // Once per test process: remove fleets left behind by killed test runs.
        GC.call_once(|| {
            let mut gc = fleet_sh();
            gc.arg("gc");
            let out = run(gc, "fleet.sh gc");
            if !out.status.success() {
                eprintln!("warning: fleet.sh gc failed: {}", describe(&out));
            }
        });

        let tmp = tempfile::Builder::new()
            .prefix("shipit-fleet.")
            .tempdir()
            .expect("cannot create a temporary directory for the fleet");
        let dir = tmp.path().to_path_buf();
        let mut up = fleet_sh();
        up.arg("up")
            .arg(&dir)
            .arg("--hosts")
            .arg(opts.hosts.to_string());
        let (flag, at) = match opts.lb {
            Lb::None => ("", At::Local),
            Lb::Haproxy(at) => ("--haproxy", at),
            Lb::Nginx(at) => ("--nginx", at),
            Lb::Caddy(at) => ("--caddy", at),
        };
        if !flag.is_empty() {
            up.arg(flag).arg(match at {
                At::Local => "local",
                At::Host => "host",
            });
        }
        if opts.prometheus {
            up.arg("--prometheus");
        }
        if opts.bastion {
            up.arg("--bastion");
        }
        if !opts.shell_delay.is_zero() {
            up.arg("--shell-delay").arg(seconds_arg(opts.shell_delay));
        }
        // The test process owns the fleet: `gc` reclaims it (and deletes the temp
        // directory) if we die without running Drop.
        up.arg("--owner")
            .arg(std::process::id().to_string())
            .arg("--gc-removes-dir");
        let out = run(up, "fleet.sh up");
        if !out.status.success() {
            // up cleans up after itself; this is for the case where it was killed.
            let mut down = fleet_sh();
            down.arg("down").arg(&dir);
            let _ = run(down, "fleet.sh down");
            panic!(
                "cannot start test fleet {opts:?}: fleet.sh up {}",
                describe(&out)
            );
        }
        let env_path = dir.join("fleet.env");
        let text = std::fs::read_to_string(&env_path).unwrap_or_else(|e| {
            panic!(
                "fleet.sh up succeeded but {} is unreadable: {e}",
                env_path.display()
            )
        });
        Fleet {
            tmp: Some(tmp),
            dir,
            env: parse_env(&text),
            spec: opts,
        }
    }

    /// What this fleet was built from.
    pub fn spec(&self) -> &FleetSpec {
        &self.spec
    }

    /// The fleet directory (keys, known_hosts, logs, per-host files under `hosts/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A value from `fleet.env` (e.g. `FLEET_ID`), empty values as `None`.
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn env_required(&self, key: &str, what: &str) -> &str {
        self.env(key)
            .unwrap_or_else(|| panic!("fleet {} has no {what} ({key} unset)", self.dir.display()))
    }

    /// Private key authorized for root on every host.
    pub fn identity(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// known_hosts with each host's ed25519 and RSA keys under its address.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The same entries, hashed (`ssh-keygen -H`).
    pub fn known_hosts_hashed(&self) -> PathBuf {
        self.dir.join("known_hosts.hashed")
    }

    /// An OpenSSH client config with every host by name (`ssh -F <this> web1`),
    /// including the ProxyJump for web hosts behind a bastion.
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// The web hosts, in order.
    pub fn hosts(&self) -> Vec<FleetHost> {
        self.env_required("FLEET_HOSTS", "hosts")
            .split_whitespace()
            .map(|name| FleetHost {
                name: name.to_string(),
                address: self.address(name),
            })
            .collect()
    }

    /// Address of any host of the fleet (`web1`, `lb`, `bastion`).
    pub fn address(&self, name: &str) -> String {
        self.env_required(&format!("FLEET_ADDR_{name}"), &format!("host {name}"))
            .to_string()
    }

    /// `hosts = [ { name = "web1", address = "..." }, ... ]`, ready for a deploy.toml.
    pub fn hosts_toml(&self) -> String {
        std::fs::read_to_string(self.dir.join("hosts.toml")).expect("hosts.toml of a running fleet")
    }

    /// Base URL of the load balancer's frontend (HAProxy, nginx or Caddy), e.g.
    /// `http://10.201.3.1:8000`.
    pub fn lb_url(&self) -> String {
        self.env_required("FLEET_LB_URL", "load balancer")
            .to_string()
    }

    /// HAProxy's admin socket, as a path usable from the test process (for
    /// `Haproxy::Host` it lies under the lb's /srv, which is a directory here).
    pub fn haproxy_socket(&self) -> PathBuf {
        PathBuf::from(self.env_required("FLEET_HAPROXY_SOCKET", "load balancer"))
    }

    /// Address of the bastion (on the fleet bridge, reachable directly).
    pub fn bastion_address(&self) -> String {
        self.env_required("FLEET_BASTION_ADDR", "bastion")
            .to_string()
    }

    /// The host's `/srv` as seen from the test process. Absolute symlinks inside
    /// (e.g. `current -> /srv/app/releases/r1`) only resolve on the host: use
    /// [`Fleet::read_link`] and friends for those.
    pub fn srv_dir(&self, host: &str) -> PathBuf {
        self.dir.join("hosts").join(host).join("srv")
    }

    /// Root's private home on the host (mounted over `/root` there), as a path
    /// usable from the test process.
    pub fn home_dir(&self, host: &str) -> PathBuf {
        self.dir.join("hosts").join(host).join("home")
    }

    /// Changes the shell start-up latency of `host` (or of every host with `"all"`)
    /// from the next SSH command on; see [`FleetSpec::shell_delay`].
    pub fn set_shell_delay(&self, host: &str, delay: Duration) {
        self.fleet_cmd(
            &["shell-delay", host, &seconds_arg(delay)],
            &format!("setting the shell delay of {host}"),
        );
    }

    /// Runs `args` as root inside the host (its network and mount namespaces, so it
    /// sees the host's /srv), with a login-like environment and cwd /root.
    pub fn exec_args(&self, host: &str, args: &[&str]) -> Output {
        self.exec_with_stdin_args(host, args, None)
    }

    /// Runs `sh -c shell_cmd` inside the host.
    pub fn exec(&self, host: &str, shell_cmd: &str) -> Output {
        self.exec_args(host, &["sh", "-c", shell_cmd])
    }

    /// Runs `sh -c shell_cmd` inside the host with `stdin` as its standard input.
    pub fn exec_with_stdin(&self, host: &str, shell_cmd: &str, stdin: &[u8]) -> Output {
        self.exec_with_stdin_args(host, &["sh", "-c", shell_cmd], Some(stdin))
    }

    fn exec_with_stdin_args(&self, host: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = fleet_sh();
        cmd.arg("exec")
            .arg(&self.dir)
            .arg(host)
            .arg("--")
            .args(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        // Feed stdin from another thread: a command that writes a lot before reading
        // all of its input would otherwise deadlock against us.
        let feeder = stdin.map(|data| {
            let mut pipe = child.stdin.take().expect("piped stdin");
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data); // EPIPE: the command chose not to read
            })
        });
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
        if let Some(feeder) = feeder {
            let _ = feeder.join();
        }
        out
    }

    /// Like [`Fleet::exec`], but panics (with stderr) unless the command succeeds;
    /// returns its stdout.
    pub fn exec_ok(&self, host: &str, shell_cmd: &str) -> String {
        let out = self.exec(host, shell_cmd);
        if !out.status.success() {
            panic!("on {host}: `{shell_cmd}` failed: {}", describe(&out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Target of the symlink `path` on the host, `None` if it is not a symlink.
    pub fn read_link(&self, host: &str, path: &str) -> Option<String> {
        let out = self.exec_args(host, &["readlink", "--", path]);
        out.status.success().then(|| {
            let s = String::from_utf8_lossy(&out.stdout);
            s.strip_suffix('\n').unwrap_or(&s).to_string()
        })
    }

    /// Whether `path` exists on the host (a dangling symlink counts).
    pub fn exists(&self, host: &str, path: &str) -> bool {
        self.exec_args(
            host,
            &["sh", "-c", r#"test -e "$1" || test -L "$1""#, "sh", path],
        )
        .status
        .success()
    }

    /// Contents of `path` on the host, `None` if it cannot be read.
    pub fn read_file(&self, host: &str, path: &str) -> Option<String> {
        let out = self.exec_args(host, &["cat", "--", path]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes `contents` to `path` on the host, creating parent directories.
    pub fn write_file(&self, host: &str, path: &str, contents: impl AsRef<[u8]>) {
        let out = self.exec_with_stdin_args(
            host,
            &[
                "sh",
                "-c",
                r#"mkdir -p "$(dirname "$1")" && cat >"$1""#,
                "sh",
                path,
            ],
            Some(contents.as_ref()),
        );
        if !out.status.success() {
            panic!("on {host}: cannot write {path}: {}", describe(&out));
        }
    }

    fn fleet_cmd(&self, args: &[&str], what: &str) {
        let mut cmd = fleet_sh();
        cmd.arg(args[0]).arg(&self.dir).args(&args[1..]);
        let out = run(cmd, what);
        if !out.status.success() {
            panic!("{what} failed: {}", describe(&out));
        }
    }

    /// Kills the host's sshd listener and every SSH session on it (as if sshd
    /// crashed); processes started from sessions, like the app, keep running.
    pub fn stop_sshd(&self, host: &str) {
        self.fleet_cmd(&["sshd", host, "stop"], &format!("stopping sshd on {host}"));
    }

    /// Kills only the listener, like `systemctl stop ssh`: open sessions survive.
    pub fn stop_sshd_listener(&self, host: &str) {
        self.fleet_cmd(
            &["sshd", host, "stop", "--keep-sessions"],
            &format!("stopping sshd on {host}"),
        );
    }

    /// Starts the host's sshd again and waits until it accepts logins.
    pub fn start_sshd(&self, host: &str) {
        self.fleet_cmd(
            &["sshd", host, "start"],
            &format!("starting sshd on {host}"),
        );
    }

    /// Cuts the host off the network (its bridge port goes down): connections to it
    /// time out or fail with "no route to host"; established ones stall.
    pub fn link_down(&self, host: &str) {
        self.fleet_cmd(&["link", host, "down"], &format!("link down on {host}"));
    }

    pub fn link_up(&self, host: &str) {
        self.fleet_cmd(&["link", host, "up"], &format!("link up on {host}"));
    }

    /// Puts `path` on the host on a tmpfs of `size` (e.g. "2m"), pre-loaded with
    /// what was there, so writes beyond `size` fail with ENOSPC.
    pub fn fill(&self, host: &str, path: &str, size: &str) {
        self.fleet_cmd(
            &["fill", host, path, size],
            &format!("fill {path} on {host}"),
        );
    }

    /// Undoes [`Fleet::fill`]; what was written meanwhile is lost.
    pub fn unfill(&self, host: &str, path: &str) {
        self.fleet_cmd(&["unfill", host, path], &format!("unfill {path} on {host}"));
    }

    /// An `ssh` command for `host` (any fleet host, by name) through the fleet's
    /// ssh_config: strict host key checking, the fleet key, ProxyJump when needed.
    /// Append the remote command with `.arg(...)`.
    pub fn ssh(&self, host: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(self.ssh_config()).arg(host);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Which load balancer the fleet has ("none", "haproxy", "nginx", "caddy").
    pub fn lb_kind(&self) -> &str {
        self.env("FLEET_LB").unwrap_or("none")
    }

    /// Runs `sh -c shell_cmd` where the load balancer lives: on the host `lb`, or
    /// here (in the test machine's namespaces) for a local one.
    pub fn lb_exec(&self, shell_cmd: &str) -> Output {
        match self.env("FLEET_LB_AT") {
            Some("host") => self.exec("lb", shell_cmd),
            Some("local") => {
                let mut cmd = Command::new("sh");
                cmd.args(["-c", shell_cmd]).env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                );
                run(cmd, shell_cmd)
            }
            _ => panic!("fleet {} has no load balancer", self.dir.display()),
        }
    }

    /// How to invoke the fleet's nginx where it runs, e.g. `nginx -c
    /// /srv/nginx/nginx.conf -e /srv/nginx/error.log`; append `-t` or `-s reload`.
    /// What a deploy.toml's `[lb] nginx = ...` names.
    pub fn nginx_cmd(&self) -> String {
        self.env_required("FLEET_NGINX_CMD", "nginx").to_string()
    }

    /// The upstream include file as nginx sees it (`/srv/nginx/upstreams/app.conf`
    /// on the lb): one `server ADDR:8080;` line per web host, owned by whatever
    /// drives nginx (a deploy.toml's `[lb] upstream_file`).
    pub fn nginx_upstream_file(&self) -> String {
        self.env_required("FLEET_NGINX_UPSTREAM_FILE", "nginx")
            .to_string()
    }

    /// nginx's directory as a path usable from the test process: nginx.conf,
    /// upstreams/app.conf, nginx.pid, error.log, access.log (with `upstream=ADDR`).
    pub fn nginx_dir(&self) -> PathBuf {
        PathBuf::from(self.env_required("FLEET_NGINX_DIR", "nginx"))
    }

    /// The upstream include file as a path usable from the test process.
    pub fn nginx_upstream_path(&self) -> PathBuf {
        self.nginx_dir().join("upstreams/app.conf")
    }

    /// Runs `{nginx_cmd} {args}` where nginx lives; panics unless it succeeds.
    pub fn nginx(&self, args: &str) -> String {
        let cmd = format!("{} {args}", self.nginx_cmd());
        let out = self.lb_exec(&cmd);
        if !out.status.success() {
            panic!("`{cmd}` failed: {}", describe(&out));
        }
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `nginx -t` and then `nginx -s reload`: the new configuration (and the
    /// upstream file) take effect for new requests; old workers finish theirs.
    pub fn nginx_reload(&self) {
        self.nginx("-t");
        self.nginx("-s reload");
    }

    /// The nginx master's pid (from its pid file).
    pub fn nginx_master_pid(&self) -> u32 {
        let path = self.nginx_dir().join("nginx.pid");
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no nginx pid in {}", path.display()))
    }

    /// The master's worker processes, current and old generation. The fleet has
    /// no pid namespaces, so /proc here sees the lb's processes too.
    pub fn nginx_workers(&self) -> Vec<NginxWorker> {
        let master = self.nginx_master_pid();
        let mut workers: Vec<NginxWorker> = std::fs::read_dir("/proc")
            .expect("read /proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                // Field 4 of /proc/PID/stat, after the parenthesised command.
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|st| {
                        st.rsplit_once(") ")
                            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
                    })
                    == Some(master)
            })
            .filter_map(|pid| {
                let title = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let title = String::from_utf8_lossy(&title);
                title
                    .starts_with("nginx: worker process")
                    .then(|| NginxWorker {
                        pid,
                        shutting_down: title.contains("is shutting down"),
                    })
            })
            .collect();
        workers.sort_by_key(|w| w.pid);
        workers
    }

    /// Caddy's admin API address as reachable from here, e.g. `10.201.3.1:2019`.
    /// On the lb host it listens on every address, so `localhost:2019` works there.
    pub fn caddy_admin(&self) -> String {
        self.env_required("FLEET_CADDY_ADMIN", "caddy").to_string()
    }

    /// `http://` + [`Fleet::caddy_admin`].
    pub fn caddy_admin_url(&self) -> String {
        format!("http://{}", self.caddy_admin())
    }

    /// The `@id` of the reverse_proxy handler whose upstreams a deploy tool manages.
    pub fn caddy_route_id(&self) -> String {
        self.env_required("FLEET_CADDY_ROUTE_ID", "caddy")
            .to_string()
    }

    /// One admin API request (`path` like `/id/app/upstreams`); status and body.
    pub fn caddy_api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let url = format!("{}{path}", self.caddy_admin_url());
        http_request(method, &url, body)
            .unwrap_or_else(|| panic!("caddy admin API: {method} {url}: no answer"))
    }

    /// The dial addresses of the `app` handler's upstreams, in order.
    pub fn caddy_upstreams(&self) -> Vec<String> {
        let path = format!("/id/{}/upstreams", self.caddy_route_id());
        let (status, body) = self.caddy_api("GET", &path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        let list: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        list.as_array()
            .unwrap_or_else(|| panic!("GET {path}: not a list: {body}"))
            .iter()
            .map(|u| u["dial"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Caddy's upstream pool: in-flight requests and failures per address.
    pub fn caddy_upstream_stats(&self) -> Vec<CaddyUpstream> {
        let (status, body) = self.caddy_api("GET", "/reverse_proxy/upstreams", None);
        assert_eq!(status, 200, "GET /reverse_proxy/upstreams: {body}");
        let list: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/reverse_proxy/upstreams: {e}: {body}"));
        let mut out: Vec<CaddyUpstream> = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| CaddyUpstream {
                address: u["address"].as_str().unwrap_or_default().to_string(),
                num_requests: u["num_requests"].as_u64().unwrap_or_default(),
                fails: u["fails"].as_u64().unwrap_or_default(),
            })
            .collect();
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out
    }

    /// Base URL of the fleet's Prometheus, e.g. `http://10.201.3.1:9090`.
    pub fn prometheus_url(&self) -> String {
        self.env_required("FLEET_PROMETHEUS_URL", "prometheus")
            .to_string()
    }

    /// An instant PromQL query; returns `data.result` (a list of series).
    pub fn prometheus_query(&self, query: &str) -> Vec<serde_json::Value> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.prometheus_url(),
            url_encode(query)
        );
        let (status, body) =
            http_get(&url).unwrap_or_else(|| panic!("prometheus: GET {url}: no answer"));
        assert_eq!(status, 200, "prometheus query {query:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus query {query:?}: {e}: {body}"));
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Sends one runtime API command (e.g. "show servers state app") to HAProxy's
    /// admin socket and returns the answer.
    pub fn haproxy_cmd(&self, command: &str) -> String {
        let path = self.haproxy_socket();
        let mut sock = UnixStream::connect(&path).unwrap_or_else(|e| {
            panic!(
                "cannot connect to HAProxy admin socket {}: {e}",
                path.display()
            )
        });
        let timeout = Some(Duration::from_secs(5));
        sock.set_read_timeout(timeout).expect("socket timeout");
        sock.set_write_timeout(timeout).expect("socket timeout");
        sock.write_all(format!("{command}\n").as_bytes())
            .unwrap_or_else(|e| panic!("HAProxy admin socket: sending {command:?}: {e}"));
        // Without "prompt", HAProxy answers one command and closes the connection.
        let mut answer = String::new();
        sock.read_to_string(&mut answer).unwrap_or_else(|e| {
            panic!("HAProxy admin socket: reading the answer to {command:?}: {e}")
        });
        answer
    }

    /// Takes `server` out of backend `app` for good (HAProxy 2.5+ deletes
    /// servers at runtime). HAProxy refuses while an idle or checking
    /// connection is still attached, so this closes them and asks again until
    /// it lets go.
    pub fn haproxy_delete_server(&self, server: &str) {
        assert_eq!(
            self.haproxy_cmd(&format!("set server app/{server} state maint"))
                .trim(),
            ""
        );
        self.haproxy_cmd(&format!("shutdown sessions server app/{server}"));
        let give_up = Instant::now() + Duration::from_secs(15);
        loop {
            let answer = self.haproxy_cmd(&format!("del server app/{server}"));
            if answer.contains("Server deleted") {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "del server app/{server}: {answer}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The status column of `show stat` for a server of backend `app`: "UP", "DOWN",
    /// "MAINT", "DRAIN", or a transitional "UP 1/2" / "DOWN 1/2". `None` if unknown.
    pub fn haproxy_server_status(&self, server: &str) -> Option<String> {
        let stat = self.haproxy_cmd("show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(px) == Some(&"app") && f.get(sv) == Some(&server))
            .and_then(|f| f.get(status).map(|s| s.to_string()))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::env::var_os("SHIPIT_FLEET_KEEP").is_some_and(|v| v == "1") {
            if let Some(tmp) = self.tmp.take() {
                eprintln!(
                    "SHIPIT_FLEET_KEEP=1: keeping fleet in {}",
                    tmp.keep().display()
                );
            }
            return;
        }
        let mut down = fleet_sh();
        down.arg("down").arg(&self.dir);
        // Never panic here: this may run while unwinding from a failed assertion.
        match down.stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: fleet.sh down {} failed: {}",
                self.dir.display(),
                describe(&out)
            ),
            Err(e) => eprintln!(
                "warning: cannot run fleet.sh down {}: {e}",
                self.dir.display()
            ),
        }
        // The TempDir field is dropped (and the directory removed) after this.
    }
}

/// Parses fleet.env: `KEY='value'` lines (fleet.sh never puts quotes in values).
fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.trim().trim_matches('\'').to_string(),
            )
        })
        .collect()
}
