//! The SSH transport against real OpenSSH servers (the test fleet).
//! Every test here needs the fleet and fails if it cannot start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use shipit::transport::ssh::{
    ConnectOptions, HostKeyChecking, SshConfigSource, SshEnv, SshOverrides, SshTarget, SshTransport,
};
use shipit::transport::{
    ExecObserver, ExecRequest, Exit, Quiet, Stream, Transport, TransportError,
};

use crate::support::fleet::{Fleet, FleetOptions, Haproxy};

fn fleet(hosts: usize) -> Fleet {
    Fleet::start(FleetOptions {
        hosts,
        haproxy: Haproxy::None,
        bastion: false,
    })
}

/// An environment with an empty home: no ~/.ssh/config, no default keys,
/// no agent, no passphrase, no prompt.
fn env(home: &Path) -> SshEnv {
    SshEnv {
        home: home.to_path_buf(),
        local_user: "root".into(),
        auth_sock: None,
        passphrase: None,
        allow_prompt: false,
    }
}

fn overrides(fleet: &Fleet) -> SshOverrides {
    SshOverrides {
        user: Some("root".into()),
        identity_file: Some(fleet.identity()),
        known_hosts: Some(fleet.known_hosts()),
        config: SshConfigSource::Disabled,
        ..SshOverrides::default()
    }
}

fn targets(fleet: &Fleet) -> Vec<SshTarget> {
    fleet
        .hosts()
        .into_iter()
        .map(|h| SshTarget {
            name: h.name,
            address: h.address,
            port: None,
            user: None,
        })
        .collect()
}

fn target(name: &str, address: &str) -> SshTarget {
    SshTarget {
        name: name.into(),
        address: address.into(),
        port: None,
        user: None,
    }
}

async fn connect(
    targets: &[SshTarget],
    overrides: &SshOverrides,
    home: &Path,
) -> (SshTransport, Vec<TransportError>) {
    SshTransport::connect_with_env(targets, overrides, &ConnectOptions::default(), env(home)).await
}

fn req(command: &str) -> ExecRequest {
    ExecRequest {
        command: command.into(),
        stdin: None,
        timeout: None,
    }
}

fn no_errors(errors: &[TransportError]) {
    let texts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "connect errors: {texts:#?}");
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new key pair of `kind` (ssh-keygen arguments) whose public key the
/// fleet accepts.
fn authorized_key(fleet: &Fleet, dir: &Path, name: &str, keygen_args: &str) -> PathBuf {
    let path = dir.join(name);
    sh(&format!(
        "ssh-keygen -q {keygen_args} -C {name} -f {}",
        path.display()
    ));
    let public = std::fs::read_to_string(path.with_extension("pub"))
        .or_else(|_| std::fs::read_to_string(format!("{}.pub", path.display())))
        .unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(fleet.dir().join("authorized_keys"))
        .unwrap();
    std::io::Write::write_all(&mut file, public.as_bytes()).unwrap();
    path
}

/// `SHA256:...` of a fleet host's key of `kind` ("ed25519", "rsa").
fn host_fingerprint(fleet: &Fleet, host: &str, kind: &str) -> String {
    let out = sh(&format!(
        "ssh-keygen -lf {}/hosts/{host}/ssh_host_{kind}_key.pub",
        fleet.dir().display()
    ));
    out.split_whitespace().nth(1).unwrap().to_string()
}

/// Records what the transport reports while a command runs.
#[derive(Default)]
struct Recorder {
    sent: Mutex<u64>,
    stdout: Mutex<Vec<u8>>,
    stderr: Mutex<Vec<u8>>,
}

impl ExecObserver for Recorder {
    fn stdin_progress(&self, sent: u64) {
        *self.sent.lock().unwrap() = sent;
    }
    fn output(&self, stream: Stream, data: &[u8]) {
        match stream {
            Stream::Stdout => self.stdout.lock().unwrap().extend_from_slice(data),
            Stream::Stderr => self.stderr.lock().unwrap().extend_from_slice(data),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ed25519_exec_exit_codes_signals_stderr_and_stdin() {
    let fleet = fleet(1);
    let home = tempfile::tempdir().unwrap();
    let (ssh, errors) = connect(&targets(&fleet), &overrides(&fleet), home.path()).await;
    no_errors(&errors);
    assert_eq!(ssh.connected(), ["web1"]);

    let out = ssh
        .exec("web1", req("hostname; echo oops >&2; exit 3"), &Quiet)
        .await
        .unwrap();
    assert_eq!(out.exit, Exit::Code(3));
    assert_eq!(out.stdout_text().trim(), "web1");
    assert_eq!(out.stderr_tail(1), "oops");

    let out = ssh
        .exec("web1", req("kill -TERM $$"), &Quiet)
        .await
        .unwrap();
    assert_eq!(
        out.exit,
        Exit::Signal {
            name: "TERM".into(),
            core_dumped: false
        }
    );

    let out = ssh
        .exec("web1", req("no-such-command-here"), &Quiet)
        .await
        .unwrap();
    assert_eq!(out.exit, Exit::Code(127));

    // 1 MB of random bytes through sha256sum, compared with the local sum.
    let random = tempfile::NamedTempFile::new().unwrap();
    sh(&format!(
        "head -c 1048576 /dev/urandom > {}",
        random.path().display()
    ));
    let bytes = std::fs::read(random.path()).unwrap();
    let expected = sh(&format!("sha256sum < {}", random.path().display()));
    let recorder = Recorder::default();
    let mut request = req("sha256sum; echo done >&2");
    request.stdin = Some(Bytes::from(bytes).into());
    let out = ssh.exec("web1", request, &recorder).await.unwrap();
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(out.stdout_text(), expected);
    assert_eq!(*recorder.sent.lock().unwrap(), 1_048_576);
    assert_eq!(*recorder.stdout.lock().unwrap(), out.stdout);
    assert_eq!(*recorder.stderr.lock().unwrap(), b"done\n");

    // A command that stops reading early: its exit status tells, no hang.
    let mut request = req("head -c 5; exit 4");
    request.stdin = Some(Bytes::from(vec![b'x'; 16 << 20]).into());
    let out = tokio::time::timeout(Duration::from_secs(60), ssh.exec("web1", request, &Quiet))
        .await
        .expect("exec hung on unread stdin")
        .unwrap();
    assert_eq!(out.exit, Exit::Code(4));
    assert_eq!(out.stdout, b"xxxxx");

    // Stdin is closed (EOF) even when empty.
    let mut request = req("wc -c");
    request.stdin = Some(Bytes::new().into());
    let out = ssh.exec("web1", request, &Quiet).await.unwrap();
    assert_eq!(out.stdout_text().trim(), "0");

    let err = ssh.exec("web9", req("true"), &Quiet).await.unwrap_err();
    assert!(matches!(err, TransportError::NotConnected { .. }), "{err}");
    ssh.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rsa_sha2_legacy_pem_and_ecdsa_keys() {
    let fleet = fleet(1);
    let keys = tempfile::tempdir().unwrap();
    let rsa = authorized_key(&fleet, keys.path(), "rsa", "-t rsa -b 3072 -N ''");
    let pem = authorized_key(&fleet, keys.path(), "pem", "-t rsa -b 2048 -m PEM -N ''");
    assert!(
        std::fs::read_to_string(&pem)
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    let ecdsa = authorized_key(&fleet, keys.path(), "ecdsa", "-t ecdsa -N ''");
    for key in [rsa, pem, ecdsa] {
        let home = tempfile::tempdir().unwrap();
        let mut o = overrides(&fleet);
        o.identity_file = Some(key.clone());
        let (ssh, errors) = connect(&targets(&fleet), &o, home.path()).await;
        no_errors(&errors);
        let out = ssh.exec("web1", req("echo ok"), &Quiet).await.unwrap();
        assert_eq!(out.stdout_text(), "ok\n", "{}", key.display());
        ssh.close().await;
    }
    // sshd logged SHA-2 RSA signatures, never ssh-rsa.
    let log = std::fs::read_to_string(fleet.dir().join("hosts/web1/sshd.log")).unwrap_or_default();
    assert!(
        !log.contains("ssh-rsa not in PubkeyAcceptedAlgorithms"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn passphrase_key_from_env_and_clear_error_without_it() {
    let fleet = fleet(2);
    let keys = tempfile::tempdir().unwrap();
    let key = authorized_key(
        &fleet,
        keys.path(),
        "locked",
        "-t ed25519 -N 'correct horse'",
    );
    let mut o = overrides(&fleet);
    o.identity_file = Some(key.clone());
    let home = tempfile::tempdir().unwrap();

    // No passphrase, no terminal: a clear error per host.
    let (_ssh, errors) = connect(&targets(&fleet), &o, home.path()).await;
    assert_eq!(errors.len(), 2);
    for e in &errors {
        let text = e.to_string();
        assert!(matches!(e, TransportError::Auth { .. }), "{text}");
        assert!(text.contains("passphrase-protected"), "{text}");
        assert!(text.contains("SHIPIT_SSH_PASSPHRASE"), "{text}");
        assert!(text.contains("ssh-add"), "{text}");
    }

    // SHIPIT_SSH_PASSPHRASE, read the way `connect` reads the process.
    // SAFETY: no other test reads or writes this variable.
    unsafe { std::env::set_var("SHIPIT_SSH_PASSPHRASE", "correct horse") };
    let mut process_env = SshEnv::from_process();
    unsafe { std::env::remove_var("SHIPIT_SSH_PASSPHRASE") };
    assert_eq!(process_env.passphrase.as_deref(), Some("correct horse"));
    process_env.home = home.path().to_path_buf();
    process_env.auth_sock = None;
    process_env.allow_prompt = false;
    let (ssh, errors) = SshTransport::connect_with_env(
        &targets(&fleet),
        &o,
        &ConnectOptions::default(),
        process_env,
    )
    .await;
    no_errors(&errors);
    for host in ["web1", "web2"] {
        let out = ssh.exec(host, req("echo ok"), &Quiet).await.unwrap();
        assert_eq!(out.stdout_text(), "ok\n");
    }

    // A wrong passphrase says so.
    let mut wrong = env(home.path());
    wrong.passphrase = Some("wrong".into());
    let (_ssh, errors) =
        SshTransport::connect_with_env(&targets(&fleet), &o, &ConnectOptions::default(), wrong)
            .await;
    assert_eq!(errors.len(), 2);
    assert!(
        errors[0].to_string().contains("does not decrypt"),
        "{}",
        errors[0]
    );
}

/// An ssh-agent of our own, killed on drop.
struct AgentProcess {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl AgentProcess {
    fn start() -> AgentProcess {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ssh-agent");
        for _ in 0..200 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(sock.exists(), "ssh-agent did not create its socket");
        AgentProcess {
            child,
            sock,
            _dir: dir,
        }
    }

    fn add(&self, key: &Path) {
        let out = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.sock)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_agent_and_the_attempt_limit() {
    let fleet = fleet(1);
    let agent = AgentProcess::start();
    let keys = tempfile::tempdir().unwrap();
    // Six keys the server does not know, then the right one.
    for i in 0..6 {
        let k = keys.path().join(format!("stranger{i}"));
        sh(&format!(
            "ssh-keygen -q -t ed25519 -N '' -f {}",
            k.display()
        ));
        agent.add(&k);
    }
    agent.add(&fleet.identity());
    let home = tempfile::tempdir().unwrap();
    let mut agent_env = env(home.path());
    agent_env.auth_sock = Some(agent.sock.clone());

    // Agent only, the right key seventh: never more than 5 offered, and
    // the message says so instead of sshd's "too many authentication failures".
    let mut o = overrides(&fleet);
    o.identity_file = None;
    let (_ssh, errors) = SshTransport::connect_with_env(
        &targets(&fleet),
        &o,
        &ConnectOptions::default(),
        agent_env.clone(),
    )
    .await;
    assert_eq!(errors.len(), 1);
    let text = errors[0].to_string();
    assert!(matches!(errors[0], TransportError::Auth { .. }), "{text}");
    assert_eq!(text.matches("(rejected)").count(), 5, "{text}");
    assert!(text.contains("not offered: at most 5"), "{text}");
    assert!(text.contains("agent key SHA256:"), "{text}");
    assert!(text.contains("web1"), "{text}");

    // With the identity configured, the agent signs with that key first.
    // Its private file is gone: only the agent can sign.
    let only_pub = keys.path().join("fleet_key");
    std::fs::copy(
        format!("{}.pub", fleet.identity().display()),
        format!("{}.pub", only_pub.display()),
    )
    .unwrap();
    std::fs::write(&only_pub, "not a key").unwrap();
    o.identity_file = Some(only_pub);
    let (ssh, errors) =
        SshTransport::connect_with_env(&targets(&fleet), &o, &ConnectOptions::default(), agent_env)
            .await;
    no_errors(&errors);
    let out = ssh.exec("web1", req("echo ok"), &Quiet).await.unwrap();
    assert_eq!(out.stdout_text(), "ok\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_commands_on_one_host() {
    let fleet = fleet(1);
    let home = tempfile::tempdir().unwrap();
    // 8 channels (the default cap) and 20, past sshd's MaxSessions 10: the
    // refusals are backpressure, not failures.
    for channels in [8, 20] {
        let options = ConnectOptions {
            channels_per_host: channels,
            ..ConnectOptions::default()
        };
        let (ssh, errors) = SshTransport::connect_with_env(
            &targets(&fleet),
            &overrides(&fleet),
            &options,
            env(home.path()),
        )
        .await;
        no_errors(&errors);
        let runs = (0..20u32).map(|i| {
            let ssh = &ssh;
            async move {
                let command = format!("sleep 0.3; echo out-{i}; echo err-{i} >&2; exit {}", i % 4);
                (i, ssh.exec("web1", req(&command), &Quiet).await)
            }
        });
        for (i, result) in futures::future::join_all(runs).await {
            let out =
                result.unwrap_or_else(|e| panic!("command {i} with {channels} channels: {e}"));
            assert_eq!(out.exit, Exit::Code(i % 4));
            assert_eq!(out.stdout_text(), format!("out-{i}\n"));
            assert_eq!(out.stderr_tail(1), format!("err-{i}"));
        }
        ssh.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_host_key_names_fingerprint_and_keyscan_line() {
    let fleet = fleet(1);
    let home = tempfile::tempdir().unwrap();
    let known_hosts = home.path().join("empty_known_hosts");
    std::fs::write(&known_hosts, "").unwrap();
    let mut o = overrides(&fleet);
    o.known_hosts = Some(known_hosts.clone());
    let (ssh, errors) = connect(&targets(&fleet), &o, home.path()).await;
    assert!(ssh.connected().is_empty());
    assert_eq!(errors.len(), 1);
    let text = errors[0].to_string();
    assert!(
        matches!(errors[0], TransportError::HostKeyUnknown { .. }),
        "{text}"
    );
    assert!(text.starts_with("web1: "), "{text}");
    assert!(
        text.contains(&host_fingerprint(&fleet, "web1", "ed25519")),
        "{text}"
    );
    let address = fleet.address("web1");
    let keyscan = format!("ssh-keyscan -p 22 -t ed25519 {address} >> ");
    assert!(text.contains(&keyscan), "{text}");

    // The suggested command is right: run it, then a strict connect passes.
    let TransportError::HostKeyUnknown { keyscan, .. } = &errors[0] else {
        unreachable!()
    };
    // `~` in it is the operator's home: here, the test's.
    sh(&format!("HOME={}; {keyscan}", home.path().display()));
    let (ssh, errors) = connect(&targets(&fleet), &o, home.path()).await;
    no_errors(&errors);
    assert_eq!(ssh.connected(), ["web1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_host_key_is_refused_even_with_accept_new() {
    let fleet = fleet(1);
    let home = tempfile::tempdir().unwrap();
    let other = home.path().join("other");
    sh(&format!(
        "ssh-keygen -q -t ed25519 -N '' -f {}",
        other.display()
    ));
    let other_pub = std::fs::read_to_string(format!("{}.pub", other.display())).unwrap();
    let known_hosts = home.path().join("known_hosts");
    let address = fleet.address("web1");
    std::fs::write(&known_hosts, format!("# stale\n{address} {other_pub}")).unwrap();
    for mode in [HostKeyChecking::Strict, HostKeyChecking::AcceptNew] {
        let mut o = overrides(&fleet);
        o.known_hosts = Some(known_hosts.clone());
        o.host_key_checking = Some(mode);
        let (ssh, errors) = connect(&targets(&fleet), &o, home.path()).await;
        assert!(ssh.connected().is_empty());
        let text = errors[0].to_string();
        assert!(
            matches!(errors[0], TransportError::HostKeyChanged { .. }),
            "{mode:?}: {text}"
        );
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains(&format!("ssh-keygen -R {address}")), "{text}");
        assert!(
            text.contains(&host_fingerprint(&fleet, "web1", "ed25519")),
            "{text}"
        );
    }
    // Nothing was appended.
    assert_eq!(
        std::fs::read_to_string(&known_hosts)
            .unwrap()
            .lines()
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_new_records_keys_then_strict_passes() {
    let fleet = fleet(2);
    let home = tempfile::tempdir().unwrap();
    let known_hosts = home.path().join("new/known_hosts");
    let mut o = overrides(&fleet);
    o.known_hosts = Some(known_hosts.clone());
    o.host_key_checking = Some(HostKeyChecking::AcceptNew);
    // A third name for web1: two connections record the same key at once.
    let mut all = targets(&fleet);
    all.push(target("web1-again", &fleet.address("web1")));
    let (ssh, errors) = connect(&all, &o, home.path()).await;
    no_errors(&errors);
    assert_eq!(ssh.connected(), ["web1", "web1-again", "web2"]);
    ssh.close().await;

    let text = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    for host in ["web1", "web2"] {
        let line = format!("{} ssh-ed25519 ", fleet.address(host));
        assert!(text.lines().any(|l| l.starts_with(&line)), "{text}");
    }
    // ssh-keygen agrees the file is well-formed and finds each host.
    sh(&format!(
        "ssh-keygen -F {} -f {}",
        fleet.address("web1"),
        known_hosts.display()
    ));

    o.host_key_checking = Some(HostKeyChecking::Strict);
    let (ssh, errors) = connect(&targets(&fleet), &o, home.path()).await;
    no_errors(&errors);
    assert_eq!(ssh.connected(), ["web1", "web2"]);
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), text);
}

/// accept-new records a key as new only where OpenSSH would: not when a
/// global known_hosts file records another key, not under the wrong name
/// with HostKeyAlias, not when a file cannot be read, not when only a
/// certificate authority vouches for the host.
#[tokio::test(flavor = "multi_thread")]
async fn accept_new_reads_what_openssh_reads_before_calling_a_key_new() {
    let fleet = fleet(1);
    let home = tempfile::tempdir().unwrap();
    let address = fleet.address("web1");
    let real_pub =
        std::fs::read_to_string(fleet.dir().join("hosts/web1/ssh_host_ed25519_key.pub")).unwrap();
    let other = home.path().join("other");
    sh(&format!(
        "ssh-keygen -q -t ed25519 -N '' -f {}",
        other.display()
    ));
    let other_pub = std::fs::read_to_string(format!("{}.pub", other.display())).unwrap();
    let user = home.path().join("known_hosts");
    let global = home.path().join("ssh_known_hosts");
    let config = home.path().join("ssh_config");
    let accept_new = |ssh_config: &str| {
        std::fs::write(&config, ssh_config).unwrap();
        let mut o = overrides(&fleet);
        o.known_hosts = Some(user.clone());
        o.host_key_checking = Some(HostKeyChecking::AcceptNew);
        o.config = SshConfigSource::File(config.clone());
        o
    };
    let global_config = format!("Host *\n    GlobalKnownHostsFile {}\n", global.display());

    // The global file records another key: changed, not new.
    std::fs::write(&global, format!("{address} {other_pub}")).unwrap();
    let (ssh, errors) = connect(&targets(&fleet), &accept_new(&global_config), home.path()).await;
    assert!(ssh.connected().is_empty());
    let text = errors[0].to_string();
    assert!(
        matches!(errors[0], TransportError::HostKeyChanged { .. }),
        "{text}"
    );
    assert!(text.contains("~/ssh_known_hosts line 1"), "{text}");
    assert!(!user.exists(), "nothing recorded");
    // The global file records this key: known, nothing recorded either.
    std::fs::write(&global, format!("{address} {real_pub}")).unwrap();
    let (ssh, errors) = connect(&targets(&fleet), &accept_new(&global_config), home.path()).await;
    no_errors(&errors);
    ssh.close().await;
    assert!(!user.exists(), "nothing recorded");

    // HostKeyAlias: looked up, and recorded, under the alias.
    let alias_config = "Host *\n    HostKeyAlias web1-key\n    GlobalKnownHostsFile none\n";
    let (ssh, errors) = connect(&targets(&fleet), &accept_new(alias_config), home.path()).await;
    no_errors(&errors);
    ssh.close().await;
    let recorded = std::fs::read_to_string(&user).unwrap();
    assert!(recorded.starts_with("web1-key ssh-ed25519 "), "{recorded}");
    std::fs::write(&user, format!("web1-key {other_pub}")).unwrap();
    let (_ssh, errors) = connect(&targets(&fleet), &accept_new(alias_config), home.path()).await;
    let text = errors[0].to_string();
    assert!(
        matches!(errors[0], TransportError::HostKeyChanged { .. }),
        "{text}"
    );
    assert!(text.contains("web1-key"), "{text}");

    // Only a certificate authority vouches for the host: refused, saying why.
    let ca_line = format!("@cert-authority {address} {other_pub}");
    std::fs::write(&user, &ca_line).unwrap();
    let (_ssh, errors) = connect(&targets(&fleet), &accept_new(""), home.path()).await;
    let text = errors[0].to_string();
    assert!(text.contains("trusts a certificate authority"), "{text}");
    assert!(text.contains("does not check host certificates"), "{text}");
    assert_eq!(std::fs::read_to_string(&user).unwrap(), ca_line);

    // A known_hosts file that cannot be read is an error naming it.
    std::fs::remove_file(&user).unwrap();
    std::fs::create_dir(&user).unwrap();
    let (_ssh, errors) = connect(&targets(&fleet), &accept_new(""), home.path()).await;
    let text = errors[0].to_string();
    assert!(matches!(errors[0], TransportError::Config { .. }), "{text}");
    assert!(
        text.contains(&format!("cannot read {}", user.display())),
        "{text}"
    );
    assert!(errors[0].before_any_command());
}

#[tokio::test(flavor = "multi_thread")]
async fn hashed_known_hosts_and_key_type_ordering() {
    let fleet = fleet(1);
    let home = tempfile::tempdir().unwrap();
    let mut o = overrides(&fleet);
    o.known_hosts = Some(fleet.known_hosts_hashed());
    let (ssh, errors) = connect(&targets(&fleet), &o, home.path()).await;
    no_errors(&errors);
    assert_eq!(ssh.connected(), ["web1"]);

    // Only the RSA key is known: the RSA host key is asked for and checks out.
    let address = fleet.address("web1");
    let rsa_pub =
        std::fs::read_to_string(fleet.dir().join("hosts/web1/ssh_host_rsa_key.pub")).unwrap();
    let rsa_only = home.path().join("rsa_only");
    std::fs::write(&rsa_only, format!("{address}\t{rsa_pub}")).unwrap();
    o.known_hosts = Some(rsa_only);
    let (ssh, errors) = connect(&targets(&fleet), &o, home.path()).await;
    no_errors(&errors);
    assert_eq!(ssh.connected(), ["web1"]);

    // Only a key type the server lacks is known: refused, and says why.
    let ecdsa = home.path().join("ecdsa");
    sh(&format!(
        "ssh-keygen -q -t ecdsa -N '' -f {}",
        ecdsa.display()
    ));
    let ecdsa_pub = std::fs::read_to_string(format!("{}.pub", ecdsa.display())).unwrap();
    let ecdsa_only = home.path().join("ecdsa_only");
    std::fs::write(&ecdsa_only, format!("{address} {ecdsa_pub}")).unwrap();
    o.known_hosts = Some(ecdsa_only);
    o.host_key_checking = Some(HostKeyChecking::AcceptNew);
    let (_ssh, errors) = connect(&targets(&fleet), &o, home.path()).await;
    let text = errors[0].to_string();
    assert!(
        matches!(errors[0], TransportError::HostKeyOtherType { .. }),
        "{text}"
    );
    assert!(text.contains("ecdsa-sha2-nistp256"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_sshd_fails_that_host_only() {
    let fleet = fleet(2);
    fleet.stop_sshd("web2");
    let home = tempfile::tempdir().unwrap();
    let (ssh, errors) = connect(&targets(&fleet), &overrides(&fleet), home.path()).await;
    assert_eq!(ssh.connected(), ["web1"]);
    assert_eq!(errors.len(), 1);
    let text = errors[0].to_string();
    assert!(
        matches!(errors[0], TransportError::Connect { .. }),
        "{text}"
    );
    assert!(text.starts_with("web2: "), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    assert!(errors[0].before_any_command());
    let out = ssh.exec("web1", req("echo ok"), &Quiet).await.unwrap();
    assert_eq!(out.stdout_text(), "ok\n");
    let err = ssh.exec("web2", req("true"), &Quiet).await.unwrap_err();
    assert!(matches!(err, TransportError::NotConnected { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn command_timeout_leaves_the_connection_usable() {
    let fleet = fleet(1);
    let home = tempfile::tempdir().unwrap();
    let (ssh, errors) = connect(&targets(&fleet), &overrides(&fleet), home.path()).await;
    no_errors(&errors);
    // A distinctive command line, to find the process afterwards.
    let mut request = req("exec sleep 31.4159");
    request.timeout = Some(Duration::from_millis(300));
    let err = ssh.exec("web1", request, &Quiet).await.unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("sleep 31.4159"), "{err}");
    // The command was stopped on the host. (The fleet's hosts share this
    // machine's process table, so pgrep sees them.)
    let mut gone = false;
    for _ in 0..200 {
        let out = Command::new("pgrep")
            .args(["-f", "sleep 31.4159"])
            .output()
            .unwrap();
        if !out.status.success() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the timed-out command is still running on the host");
    let out = ssh
        .exec("web1", req("echo still here"), &Quiet)
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "still here\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn link_down_mid_command_fails_that_host_not_the_process() {
    let fleet = fleet(2);
    let home = tempfile::tempdir().unwrap();
    let options = ConnectOptions {
        keepalive_interval: Duration::from_secs(1),
        keepalive_max: 2,
        ..ConnectOptions::default()
    };
    let (ssh, errors) = SshTransport::connect_with_env(
        &targets(&fleet),
        &overrides(&fleet),
        &options,
        env(home.path()),
    )
    .await;
    no_errors(&errors);
    let running = ssh.exec("web1", req("sleep 120"), &Quiet);
    let cut = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| fleet.link_down("web1"));
    };
    // A guard against a hang, not a timing assertion.
    let (result, ()) = tokio::time::timeout(Duration::from_secs(100), async {
        tokio::join!(running, cut)
    })
    .await
    .expect("the command hung after its host's link went down");
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Disconnected { .. } | TransportError::Timeout { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("web1: "), "{err}");
    if let TransportError::Disconnected { detail, .. } = &err {
        assert!(detail.contains("stopped answering"), "{err}");
    }
    assert!(!ssh.is_connected("web1"));
    // The other host is unaffected.
    let out = ssh.exec("web2", req("echo ok"), &Quiet).await.unwrap();
    assert_eq!(out.stdout_text(), "ok\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_config_file_supplies_hostname_user_identity_and_known_hosts() {
    let fleet = fleet(2);
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host app-1\n    HostName {}\nHost app-2\n    HostName {}\n\
             Host app-*\n    User root\n    IdentityFile {}\n    IdentitiesOnly yes\n    \
             UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n",
            fleet.address("web1"),
            fleet.address("web2"),
            fleet.identity().display(),
            fleet.known_hosts().display(),
        ),
    )
    .unwrap();
    let o = SshOverrides {
        config: SshConfigSource::File(config.clone()),
        ..SshOverrides::default()
    };
    let targets = [target("a1", "app-1"), target("a2", "app-2")];
    let (ssh, errors) = connect(&targets, &o, home.path()).await;
    no_errors(&errors);
    let out = ssh
        .exec("a2", req("hostname; whoami"), &Quiet)
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "web2\nroot\n");

    // ~/.ssh/config is read by default.
    std::fs::create_dir(home.path().join(".ssh")).unwrap();
    std::fs::copy(&config, home.path().join(".ssh/config")).unwrap();
    let (ssh, errors) = connect(&targets, &SshOverrides::default(), home.path()).await;
    no_errors(&errors);
    assert_eq!(ssh.connected(), ["a1", "a2"]);

    // ... and `StrictHostKeyChecking no` is refused with a reason.
    std::fs::write(
        home.path().join(".ssh/config"),
        "Host *\n    StrictHostKeyChecking no\n",
    )
    .unwrap();
    let (_ssh, errors) = connect(&targets[..1], &SshOverrides::default(), home.path()).await;
    let text = errors[0].to_string();
    assert!(matches!(errors[0], TransportError::Config { .. }), "{text}");
    assert!(
        text.contains("does not turn host key checking off"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bastion_jump_shared_by_targets_and_chains() {
    let fleet = Fleet::start(FleetOptions {
        hosts: 2,
        haproxy: Haproxy::None,
        bastion: true,
    });
    let bastion = fleet.bastion_address();
    let home = tempfile::tempdir().unwrap();
    let targets = targets(&fleet);
    assert_eq!(targets.len(), 2);

    // Not reachable directly.
    let (ssh, errors) = connect(&targets, &overrides(&fleet), home.path()).await;
    assert!(ssh.connected().is_empty());
    assert_eq!(errors.len(), 2);
    assert!(
        matches!(errors[0], TransportError::Connect { .. }),
        "{}",
        errors[0]
    );

    // Through the bastion: one bastion connection for both targets.
    let mut o = overrides(&fleet);
    o.proxy_jump = Some(vec![format!("root@{bastion}:22")]);
    let (ssh, errors) = connect(&targets, &o, home.path()).await;
    no_errors(&errors);
    assert_eq!(ssh.connected(), ["web1", "web2"]);
    assert_eq!(ssh.jump_connections(), 1);
    let runs = ["web1", "web2"].map(|h| ssh.exec(h, req("hostname"), &Quiet));
    let outs = futures::future::join_all(runs).await;
    assert_eq!(outs[0].as_ref().unwrap().stdout_text(), "web1\n");
    assert_eq!(outs[1].as_ref().unwrap().stdout_text(), "web2\n");
    ssh.close().await;

    // A chain of two hops (the bastion through itself), via ssh_config.
    let config = home.path().join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host jump\n    HostName {bastion}\nHost web1\n    HostName {}\nHost web2\n    HostName {}\n\
             Host web*\n    ProxyJump jump,root@{bastion}\n\
             Host *\n    User root\n    IdentityFile {}\n    UserKnownHostsFile {}\n",
            fleet.address("web1"),
            fleet.address("web2"),
            fleet.identity().display(),
            fleet.known_hosts().display()
        ),
    )
    .unwrap();
    let o = SshOverrides {
        config: SshConfigSource::File(config),
        ..SshOverrides::default()
    };
    let aliases = [target("web1", "web1"), target("web2", "web2")];
    let (ssh, errors) = connect(&aliases, &o, home.path()).await;
    no_errors(&errors);
    assert_eq!(ssh.jump_connections(), 2);
    let out = ssh.exec("web2", req("hostname"), &Quiet).await.unwrap();
    assert_eq!(out.stdout_text(), "web2\n");

    // An unknown bastion key is reported as such, naming the jump host.
    let empty = home.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let mut o = overrides(&fleet);
    o.proxy_jump = Some(vec![format!("root@{bastion}")]);
    o.known_hosts = Some(empty);
    let (_ssh, errors) = connect(&targets[..1], &o, home.path()).await;
    let text = errors[0].to_string();
    assert!(matches!(errors[0], TransportError::Jump { .. }), "{text}");
    assert!(text.contains("host key for"), "{text}");
    assert!(
        text.contains(&format!("ssh-keyscan -p 22 -t ed25519 {bastion}")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_connections_to_one_sshd_stay_under_max_startups() {
    let fleet = fleet(1);
    let home = tempfile::tempdir().unwrap();
    // 60 connections to one sshd (MaxStartups 10:30:100): handshakes are
    // limited per sshd and resets during key exchange are retried.
    let address = fleet.address("web1");
    let many: Vec<SshTarget> = (0..60)
        .map(|i| target(&format!("conn{i}"), &address))
        .collect();
    let options = ConnectOptions {
        max_concurrent_connects: 64,
        ..ConnectOptions::default()
    };
    let (ssh, errors) =
        SshTransport::connect_with_env(&many, &overrides(&fleet), &options, env(home.path())).await;
    no_errors(&errors);
    assert_eq!(ssh.connected().len(), 60);
    let runs = many
        .iter()
        .map(|t| ssh.exec(&t.name, req("echo ok"), &Quiet));
    for out in futures::future::join_all(runs).await {
        assert_eq!(out.unwrap().stdout_text(), "ok\n");
    }
    ssh.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_commands_give_their_sessions_back() {
    let fleet = fleet(1);
    let home = tempfile::tempdir().unwrap();
    let (ssh, errors) = connect(&targets(&fleet), &overrides(&fleet), home.path()).await;
    no_errors(&errors);
    // 12 commands that print and then wait, abandoned by dropping their
    // futures (as a caller that gives up does), then 12 timed out: more
    // than sshd's MaxSessions 10 in all.
    for _ in 0..12 {
        let run = ssh.exec("web1", req("echo started; sleep 600"), &Quiet);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), run)
                .await
                .is_err()
        );
    }
    for _ in 0..12 {
        let mut request = req("echo started; sleep 600");
        request.timeout = Some(Duration::from_millis(300));
        let err = ssh.exec("web1", request, &Quiet).await.unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    }
    let runs = (0..10).map(|_| ssh.exec("web1", req("echo ok"), &Quiet));
    for out in futures::future::join_all(runs).await {
        assert_eq!(out.unwrap().stdout_text(), "ok\n");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sshd_killed_mid_command_is_a_disconnect() {
    let fleet = fleet(1);
    let home = tempfile::tempdir().unwrap();
    let (ssh, errors) = connect(&targets(&fleet), &overrides(&fleet), home.path()).await;
    no_errors(&errors);
    let running = ssh.exec("web1", req("echo started; sleep 120"), &Quiet);
    let kill = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| fleet.stop_sshd("web1"));
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(running, kill)
    })
    .await
    .expect("the command hung after sshd was killed");
    let err = result.unwrap_err();
    assert!(matches!(err, TransportError::Disconnected { .. }), "{err}");
    assert!(err.to_string().contains("outcome is unknown"), "{err}");
    assert!(!err.before_any_command());
    let err = ssh.exec("web1", req("true"), &Quiet).await.unwrap_err();
    assert!(matches!(err, TransportError::Disconnected { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_host_times_out_with_a_clear_error() {
    let fleet = fleet(2);
    fleet.link_down("web2");
    let home = tempfile::tempdir().unwrap();
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs(1),
        ..ConnectOptions::default()
    };
    let (ssh, errors) = SshTransport::connect_with_env(
        &targets(&fleet),
        &overrides(&fleet),
        &options,
        env(home.path()),
    )
    .await;
    assert_eq!(ssh.connected(), ["web1"]);
    let text = errors[0].to_string();
    assert!(
        matches!(errors[0], TransportError::Connect { .. }),
        "{text}"
    );
    assert!(text.starts_with("web2: "), "{text}");
    assert!(text.contains("no answer within 1s"), "{text}");
}

/// The processes of `marker`'s command line on the fleet's hosts (they
/// share this machine's process table).
fn running(marker: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .unwrap()
        .status
        .success()
}

/// A command given up on is stopped by one `kill` of its process group: its
/// whole tree (children, a subshell, a grandchild) is gone. What ran on the
/// host to stop it is that kill alone, never a search of every process's
/// `/proc/*/environ`, which took seconds on a loaded host. A command given
/// up on before its login shell even started (a slow `.bashrc`) is stopped
/// the same way once it has.
#[tokio::test(flavor = "multi_thread")]
async fn abandoned_command_tree_is_killed_by_its_group_without_a_proc_scan() {
    let fleet = fleet(1);
    // The host's bash logs every command sshd gives it, one per record.
    let bashrc = fleet.home_dir("web1").join(".bashrc");
    let log = fleet.home_dir("web1").join("commands.log");
    let logging = "printf '%s\\036' \"$BASH_EXECUTION_STRING\" >> ~/commands.log\n";
    std::fs::write(&bashrc, std::fs::read_to_string(&bashrc).unwrap() + logging).unwrap();
    let home = tempfile::tempdir().unwrap();
    let (ssh, errors) = connect(&targets(&fleet), &overrides(&fleet), home.path()).await;
    no_errors(&errors);
    let commands = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .split('\u{1e}')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let stops = |ran: &[String]| -> Vec<String> {
        ran.iter()
            .filter(|c| c.starts_with("kill "))
            .cloned()
            .collect()
    };

    for (round, slow_shell) in [(1, false), (2, true)] {
        if slow_shell {
            // Given up on while its login shell still reads .bashrc.
            std::fs::write(
                &bashrc,
                std::fs::read_to_string(&bashrc).unwrap() + "sleep 1\n",
            )
            .unwrap();
        }
        std::fs::write(&log, "").unwrap();
        let marker = format!("sleep 27{round}.828");
        let tree = format!("{marker} & ({marker}; :) & sh -c '{marker}; :' & echo started; wait");
        let mut request = req(&tree);
        request.timeout = Some(Duration::from_millis(if slow_shell { 200 } else { 1500 }));
        let err = ssh.exec("web1", request, &Quiet).await.unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
        let mut gone = false;
        for _ in 0..300 {
            if !running(&marker) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            gone,
            "round {round}: part of the abandoned command's tree still runs"
        );
        // Once stopped, the session is given back; then nothing else ran.
        ssh.settle(Duration::from_secs(20)).await;
        let ran = commands();
        assert_eq!(ran.len(), 2, "round {round}: {ran:#?}");
        assert!(ran[0].ends_with(&tree), "round {round}: {ran:#?}");
        let stop = stops(&ran);
        assert_eq!(stop.len(), 1, "round {round}: {ran:#?}");
        let group: u32 = stop[0]
            .strip_prefix("kill -s TERM -- -")
            .and_then(|rest| rest.strip_suffix(" 2>/dev/null; true"))
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("round {round}: not one kill of a group: {ran:#?}"));
        assert!(group > 1);
        assert!(
            ran.iter().all(|c| !c.contains("/proc")),
            "round {round}: {ran:#?}"
        );
    }
    let out = ssh
        .exec("web1", req("echo still here"), &Quiet)
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "still here\n");
}
