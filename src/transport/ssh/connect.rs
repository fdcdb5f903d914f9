//! Opens authenticated connections: TCP (or a channel through a jump host),
//! the SSH handshake with our own host key check, then login.
//!
//! It owns the limits that keep a big fleet from tripping over sshd:
//! a global cap on connects in flight, at most [`HANDSHAKES_PER_SSHD`]
//! unauthenticated connections per sshd (OpenSSH's `MaxStartups 10:30:100`
//! starts dropping earlier than its numbers suggest), and retries with
//! backoff when sshd resets a connection during key exchange. Jump hosts
//! are connected once per chain and shared by every target behind them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, DisconnectReason, Handle, Handler};
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};
use russh::{Preferred, client::Config};
use tokio::net::TcpStream;

use super::quick_ack::QuickAck;
use tokio::sync::{OnceCell, Semaphore};

use super::ConnectOptions;
use super::auth::{Agent, AuthFailure, KeyStore, authenticate};
use super::known_hosts::{HostKeyDb, Verdict, append, fingerprint, host_key_name, keyscan_type};
use super::settings::{HostKeyChecking, HostSettings, SshEnv, display_path};
use crate::transport::TransportError;

/// SSH handshakes in flight at once towards one sshd.
pub const HANDSHAKES_PER_SSHD: usize = 5;
/// How often a handshake reset by the server is retried.
const HANDSHAKE_RETRIES: u32 = 4;

/// State shared by every connection of one `SshTransport::connect`.
pub(crate) struct Shared {
    pub env: SshEnv,
    pub options: ConnectOptions,
    keys: KeyStore,
    agent: Option<Agent>,
    connects: Semaphore,
    handshakes: Mutex<HashMap<String, Arc<Semaphore>>>,
    jumps: Mutex<HashMap<String, JumpCell>>,
}

type JumpCell = Arc<OnceCell<Result<Arc<Connection>, Arc<TransportError>>>>;

/// One authenticated SSH connection.
pub(crate) struct Connection {
    pub handle: Handle<ClientHandler>,
    /// `user@host:port`, for messages.
    pub endpoint: String,
    /// Why the connection ended, once it has.
    lost: Arc<Mutex<Option<String>>>,
    /// The jump host connection this one runs through; kept alive with it.
    _via: Option<Arc<Connection>>,
}

impl Connection {
    /// Why the connection is gone, as well as it is known.
    pub fn lost_reason(&self) -> String {
        lock(&self.lost)
            .clone()
            .unwrap_or_else(|| "the connection closed".to_string())
    }

    pub async fn disconnect(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the handler refused a server's key (russh only says "Unknown server key").
#[derive(Debug, Clone)]
enum KeyProblem {
    Verdict(Verdict, PublicKey),
    Certificate,
    RecordFailed(PathBuf, String),
    /// A known_hosts or revoked keys file exists but cannot be read.
    Unreadable(String),
}

/// russh's callbacks for one connection: host key checking and noting why
/// the connection ended.
pub(crate) struct ClientHandler {
    host: String,
    port: u16,
    host_keys: HostKeyDb,
    checking: HostKeyChecking,
    problem: Arc<Mutex<Option<KeyProblem>>>,
    lost: Arc<Mutex<Option<String>>>,
    keepalive_text: String,
}

impl Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                *lock(&self.problem) = Some(KeyProblem::Certificate);
                return Ok(false);
            }
        };
        let verdict = match self.host_keys.load() {
            Ok(known) => known.check(&self.host_keys.name, key),
            Err(e) => {
                *lock(&self.problem) = Some(KeyProblem::Unreadable(e.to_string()));
                return Ok(false);
            }
        };
        tracing::debug!(
            "{}:{} offered {} {}: {verdict:?}",
            self.host,
            self.port,
            key.algorithm(),
            fingerprint(key)
        );
        match verdict {
            Verdict::Known => Ok(true),
            Verdict::Unknown if self.checking == HostKeyChecking::AcceptNew => {
                let Some(file) = self.host_keys.record_to() else {
                    *lock(&self.problem) = Some(KeyProblem::Verdict(verdict, key.clone()));
                    return Ok(false);
                };
                match append(file, &self.host_keys.name, key) {
                    Ok(()) => {
                        tracing::debug!(
                            "recorded {} for {} in {}",
                            fingerprint(key),
                            self.host_keys.name,
                            file.display()
                        );
                        Ok(true)
                    }
                    Err(e) => {
                        *lock(&self.problem) =
                            Some(KeyProblem::RecordFailed(file.to_path_buf(), e.to_string()));
                        Ok(false)
                    }
                }
            }
            other => {
                *lock(&self.problem) = Some(KeyProblem::Verdict(other, key.clone()));
                Ok(false)
            }
        }
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let text = match &reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                if info.message.is_empty() {
                    format!("the server closed the connection ({:?})", info.reason_code)
                } else {
                    format!("the server closed the connection: {}", info.message)
                }
            }
            DisconnectReason::Error(russh::Error::KeepaliveTimeout) => self.keepalive_text.clone(),
            DisconnectReason::Error(e) => describe(e),
        };
        tracing::debug!("{}:{} disconnected: {text}", self.host, self.port);
        lock(&self.lost).get_or_insert(text);
        match reason {
            DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// An operator-readable account of a russh error.
pub(crate) fn describe(e: &russh::Error) -> String {
    match e {
        russh::Error::IO(io) => io.to_string(),
        russh::Error::HUP | russh::Error::Disconnect => "the server closed the connection".into(),
        russh::Error::NoCommonAlgo { kind, ours, theirs } => format!(
            "no {kind:?} algorithm in common with the server (ours: {}; theirs: {})",
            ours.join(","),
            theirs.join(",")
        ),
        russh::Error::KeepaliveTimeout => "the host stopped answering keepalives".into(),
        other => other.to_string(),
    }
}

/// The host key algorithms to offer: the types known_hosts has for this
/// host first (so the server proves itself with a key we can check), then
/// russh's usual order, never SHA-1 `ssh-rsa`.
pub(crate) fn preferred_host_key_algorithms(known: &[Algorithm]) -> Vec<Algorithm> {
    let rsa = [
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha256),
        },
    ];
    let defaults: Vec<Algorithm> = Preferred::DEFAULT
        .key
        .iter()
        .filter(|a| **a != Algorithm::Rsa { hash: None })
        .cloned()
        .collect();
    let mut out: Vec<Algorithm> = Vec::new();
    for alg in known {
        let expanded: Vec<Algorithm> = if matches!(alg, Algorithm::Rsa { .. }) {
            rsa.to_vec()
        } else {
            vec![alg.clone()]
        };
        for a in expanded {
            if defaults.contains(&a) && !out.contains(&a) {
                out.push(a);
            }
        }
    }
    for a in defaults {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

fn client_config(options: &ConnectOptions, known: &[Algorithm]) -> Config {
    Config {
        nodelay: true,
        keepalive_interval: Some(options.keepalive_interval),
        keepalive_max: options.keepalive_max,
        inactivity_timeout: None,
        preferred: Preferred {
            key: Cow::Owned(preferred_host_key_algorithms(known)),
            ..Preferred::DEFAULT
        },
        ..Config::default()
    }
}

impl Shared {
    pub fn new(env: SshEnv, options: ConnectOptions) -> Shared {
        Shared {
            keys: KeyStore::new(&env),
            agent: env.auth_sock.clone().map(Agent::new),
            connects: Semaphore::new(options.max_concurrent_connects.max(1)),
            handshakes: Mutex::new(HashMap::new()),
            jumps: Mutex::new(HashMap::new()),
            env,
            options,
        }
    }

    /// Every jump host connection that was opened, innermost first.
    pub fn jump_connections(&self) -> Vec<Arc<Connection>> {
        let jumps = lock(&self.jumps);
        let mut chains: Vec<(&String, &JumpCell)> = jumps.iter().collect();
        chains.sort_by_key(|(chain, _)| std::cmp::Reverse(chain.len()));
        chains
            .into_iter()
            .filter_map(|(_, cell)| cell.get().and_then(|r| r.as_ref().ok()).cloned())
            .collect()
    }

    /// Connects and logs in to a target, through its jump hosts.
    pub async fn connect_target(
        self: &Arc<Self>,
        target: &HostSettings,
    ) -> Result<Connection, TransportError> {
        let _slot = self.connects.acquire().await.ok();
        let mut via: Option<Arc<Connection>> = None;
        let mut chain = String::new();
        let mut labels: Vec<String> = Vec::new();
        for hop in &target.jumps {
            chain.push('>');
            chain.push_str(&hop.endpoint());
            let cell = lock(&self.jumps).entry(chain.clone()).or_default().clone();
            let outer = via.clone();
            let outer_labels = labels.clone();
            let result = cell
                .get_or_init(|| async {
                    self.connect_hop(hop, &hop.label, outer, &outer_labels)
                        .await
                        .map(Arc::new)
                        .map_err(Arc::new)
                })
                .await
                .clone();
            match result {
                Ok(connection) => via = Some(connection),
                Err(e) => {
                    return Err(TransportError::Jump {
                        host: target.label.clone(),
                        jump: hop.label.clone(),
                        detail: e.to_string(),
                    });
                }
            }
            labels.push(hop.label.clone());
        }
        self.connect_hop(target, &target.label, via, &labels).await
    }

    /// Connects to one hop, directly or through `via`, and logs in.
    async fn connect_hop(
        &self,
        hop: &HostSettings,
        label: &str,
        via: Option<Arc<Connection>>,
        jump_labels: &[String],
    ) -> Result<Connection, TransportError> {
        let known = hop.host_keys.load().map_err(|e| TransportError::Config {
            host: label.to_string(),
            detail: e.to_string(),
        })?;
        let config = Arc::new(client_config(
            &self.options,
            &known.known_algorithms(&hop.host_keys.name),
        ));
        let sshd = match &via {
            Some(v) => format!("{}>{}:{}", v.endpoint, hop.host_name, hop.port),
            None => format!("{}:{}", hop.host_name, hop.port),
        };
        let slots = lock(&self.handshakes)
            .entry(sshd)
            .or_insert_with(|| Arc::new(Semaphore::new(HANDSHAKES_PER_SSHD)))
            .clone();
        let timeout = self.options.connect_timeout;
        let connect_error = |detail: String| TransportError::Connect {
            host: label.to_string(),
            address: hop.endpoint(),
            detail,
        };

        let mut attempt = 0;
        loop {
            let _slot = slots.acquire().await.ok();
            let problem = Arc::new(Mutex::new(None));
            let lost = Arc::new(Mutex::new(None));
            let handler = ClientHandler {
                host: hop.host_name.clone(),
                port: hop.port,
                host_keys: hop.host_keys.clone(),
                checking: hop.host_key_checking,
                problem: problem.clone(),
                lost: lost.clone(),
                keepalive_text: format!(
                    "the host stopped answering ({} keepalives sent {} apart went unanswered)",
                    self.options.keepalive_max,
                    humantime::format_duration(self.options.keepalive_interval)
                ),
            };
            let handshake = match &via {
                None => {
                    let stream = tcp_connect(&hop.host_name, hop.port, timeout)
                        .await
                        .map_err(connect_error)?;
                    tokio::time::timeout(
                        timeout,
                        client::connect_stream(config.clone(), QuickAck::new(stream), handler),
                    )
                    .await
                }
                Some(via) => {
                    let channel = tokio::time::timeout(
                        timeout,
                        via.handle
                            .channel_open_direct_tcpip(hop.host_name.clone(), hop.port.into(), "127.0.0.1", 0),
                    )
                    .await
                    .map_err(|_| {
                        connect_error(format!(
                            "jump host {} did not open a tunnel within {}",
                            via.endpoint,
                            humantime::format_duration(timeout)
                        ))
                    })?
                    .map_err(|e| {
                        let why = match &e {
                            russh::Error::ChannelOpenFailure(f) => format!("{f:?}"),
                            _ if via.handle.is_closed() => via.lost_reason(),
                            other => describe(other),
                        };
                        connect_error(format!(
                            "jump host {} could not open a connection to port {} ({why}; is sshd running there, and does the jump host allow TCP forwarding?)",
                            via.endpoint, hop.port
                        ))
                    })?;
                    tokio::time::timeout(
                        timeout,
                        client::connect_stream(config.clone(), channel.into_stream(), handler),
                    )
                    .await
                }
            };
            let mut handle = match handshake {
                Err(_) => {
                    return Err(connect_error(format!(
                        "connected, but the SSH handshake did not finish within {}",
                        humantime::format_duration(timeout)
                    )));
                }
                Ok(Ok(handle)) => handle,
                Ok(Err(e)) => {
                    if let Some(problem) = lock(&problem).take() {
                        return Err(key_error(label, hop, problem, jump_labels, &self.env));
                    }
                    if retryable(&e) && attempt < HANDSHAKE_RETRIES {
                        attempt += 1;
                        let pause = backoff(attempt, label);
                        tracing::debug!(
                            "{label}: handshake with {} failed ({}), retry {attempt} in {pause:?}",
                            hop.endpoint(),
                            describe(&e)
                        );
                        drop(_slot);
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    let mut detail = format!("SSH handshake failed: {}", describe(&e));
                    if retryable(&e) {
                        detail.push_str(&format!(
                            " ({} attempts; sshd may be refusing new connections: too many at once (MaxStartups), or it is not an SSH server)",
                            attempt + 1
                        ));
                    }
                    return Err(connect_error(detail));
                }
            };

            let auth = authenticate(
                &mut handle,
                hop,
                &self.keys,
                self.agent.as_ref(),
                &self.env,
                timeout,
            )
            .await;
            match auth {
                Ok(()) => {
                    tracing::debug!("{label}: logged in to {}", hop.endpoint());
                    return Ok(Connection {
                        handle,
                        endpoint: hop.endpoint(),
                        lost,
                        _via: via,
                    });
                }
                Err(AuthFailure::Rejected(detail)) => {
                    let _ = handle
                        .disconnect(russh::Disconnect::ByApplication, "", "en")
                        .await;
                    return Err(TransportError::Auth {
                        host: label.to_string(),
                        user: hop.user.clone(),
                        detail,
                    });
                }
                Err(AuthFailure::Closed(detail)) => {
                    let why = lock(&lost)
                        .clone()
                        .unwrap_or_else(|| "the server closed the connection".into());
                    return Err(TransportError::Auth {
                        host: label.to_string(),
                        user: hop.user.clone(),
                        detail: format!(
                            "{why} while logging in ({detail}); if many keys were offered, sshd's MaxAuthTries may have been reached: set ssh.identity_file or IdentitiesOnly"
                        ),
                    });
                }
            }
        }
    }
}

async fn tcp_connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let connecting = TcpStream::connect((host, port));
    let stream = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => {
            return Err(format!(
                "no answer within {} (host down, wrong address, or a firewall dropping port {port}?)",
                humantime::format_duration(timeout)
            ));
        }
        Ok(Err(e)) => {
            use std::io::ErrorKind::*;
            return Err(match e.kind() {
                ConnectionRefused => {
                    format!("connection refused (is sshd running and listening on port {port}?)")
                }
                HostUnreachable | NetworkUnreachable => {
                    format!("{e} (is the address right, or does the host need ssh.proxy_jump?)")
                }
                _ if e.to_string().contains("lookup") => format!("cannot resolve {host}: {e}"),
                _ => e.to_string(),
            });
        }
        Ok(Ok(stream)) => stream,
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("set_nodelay failed: {e}");
    }
    Ok(stream)
}

/// sshd resets connections past `MaxStartups`: worth another try.
fn retryable(e: &russh::Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        russh::Error::IO(io) => matches!(
            io.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        ),
        russh::Error::Disconnect | russh::Error::HUP => true,
        _ => false,
    }
}

/// 250 ms, 500 ms, 1 s, 2 s, each plus up to 250 ms of jitter so retries
/// of many hosts do not arrive together.
fn backoff(attempt: u32, label: &str) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(label.as_bytes());
    hasher.write_u32(attempt);
    let jitter = hasher.finish() % 250;
    Duration::from_millis(250 * (1 << (attempt - 1).min(4)) + jitter)
}

/// The command that records a host's key, run where the host is reachable.
fn keyscan_command(
    hop: &HostSettings,
    key: &PublicKey,
    jump_labels: &[String],
    env: &SshEnv,
) -> String {
    let file = hop
        .host_keys
        .record_to()
        .map(|f| display_path(f, &env.home))
        .unwrap_or_else(|| "~/.ssh/known_hosts".into());
    let mut scan = format!(
        "ssh-keyscan -p {} -t {} {}",
        hop.port,
        keyscan_type(&key.algorithm()),
        hop.host_name
    );
    // Under HostKeyAlias, the key is looked up under the alias.
    if hop.host_keys.name != host_key_name(&hop.host_name, hop.port) {
        let name = &hop.host_keys.name;
        let rename = format!("s/^[^ ]* /{name} /");
        let plain = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:[]@".contains(c));
        scan = if plain {
            format!("{scan} | sed '{rename}'")
        } else {
            format!("{scan} | sed {}", crate::shell::quote(&rename))
        };
    }
    match jump_labels.split_last() {
        None => format!("{scan} >> {file}"),
        Some((last, [])) => format!("ssh {last} {scan} >> {file}"),
        Some((last, outer)) => format!("ssh -J {} {last} {scan} >> {file}", outer.join(",")),
    }
}

fn key_error(
    label: &str,
    hop: &HostSettings,
    problem: KeyProblem,
    jump_labels: &[String],
    env: &SshEnv,
) -> TransportError {
    let address = hop.host_keys.name.clone();
    let first_file = hop
        .host_keys
        .record_to()
        .map(|f| display_path(f, &env.home))
        .unwrap_or_default();
    let show = |f: &PathBuf| display_path(f, &env.home);
    match problem {
        KeyProblem::Certificate => TransportError::Connect {
            host: label.into(),
            address,
            detail: "the server presented a host certificate, which shipit does not check".into(),
        },
        KeyProblem::Unreadable(detail) => TransportError::Config {
            host: label.into(),
            detail,
        },
        KeyProblem::RecordFailed(file, e) => TransportError::Connect {
            host: label.into(),
            address,
            detail: format!(
                "cannot record the new host key in {}: {e}",
                display_path(&file, &env.home)
            ),
        },
        KeyProblem::Verdict(verdict, key) => match verdict {
            Verdict::Known => TransportError::Ssh {
                host: label.into(),
                detail: "host key was accepted, yet the handshake failed".into(),
            },
            Verdict::Unknown => TransportError::HostKeyUnknown {
                host: label.into(),
                address,
                ip: hop.host_name.clone(),
                port: hop.port,
                fingerprint: fingerprint(&key),
                known_hosts: first_file,
                keyscan: keyscan_command(hop, &key, jump_labels, env),
            },
            Verdict::OtherType { known } => {
                let mut types: Vec<String> = known
                    .iter()
                    .map(|(a, _, _)| a.as_str().to_string())
                    .collect();
                types.dedup();
                let (file, line) = known
                    .first()
                    .map(|(_, f, l)| (show(f), *l))
                    .unwrap_or((first_file, 0));
                TransportError::HostKeyOtherType {
                    host: label.into(),
                    address,
                    key_type: key.algorithm().as_str().to_string(),
                    fingerprint: fingerprint(&key),
                    known_types: types.join(", "),
                    known_hosts: file,
                    line,
                    keyscan: keyscan_command(hop, &key, jump_labels, env),
                }
            }
            Verdict::Changed { file, line } => TransportError::HostKeyChanged {
                host: label.into(),
                address: address.clone(),
                fingerprint: fingerprint(&key),
                known_hosts: show(&file),
                known_hosts_key: if address.starts_with('[') {
                    format!("'{address}'")
                } else {
                    address
                },
                line,
            },
            Verdict::CertAuthority { file, line } => TransportError::Connect {
                host: label.into(),
                address,
                detail: format!(
                    "no host key is recorded for it, but {} line {line} trusts a certificate authority for it, \
                     and shipit does not check host certificates; it will not take the plain key ({}) as new \
                     in their place, even with accept-new. Verify the key out of band, then record it with: {}",
                    show(&file),
                    fingerprint(&key),
                    keyscan_command(hop, &key, jump_labels, env)
                ),
            },
            Verdict::Revoked { file, line } => TransportError::HostKeyRevoked {
                host: label.into(),
                address,
                fingerprint: fingerprint(&key),
                known_hosts: show(&file),
                line,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::EcdsaCurve;

    #[test]
    fn known_types_go_first_and_sha1_rsa_never() {
        let default = preferred_host_key_algorithms(&[]);
        assert_eq!(default[0], Algorithm::Ed25519);
        assert!(!default.contains(&Algorithm::Rsa { hash: None }));

        let rsa_known = preferred_host_key_algorithms(&[Algorithm::Rsa { hash: None }]);
        assert_eq!(
            &rsa_known[..3],
            &[
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512)
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256)
                },
                Algorithm::Ed25519,
            ]
        );
        assert_eq!(rsa_known.len(), default.len());

        let ecdsa = Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        };
        let both = preferred_host_key_algorithms(&[ecdsa.clone(), Algorithm::Ed25519]);
        assert_eq!(&both[..2], &[ecdsa, Algorithm::Ed25519]);
        assert_eq!(both.len(), default.len());
    }

    #[test]
    fn keyscan_hint_goes_through_jump_hosts() {
        let env = SshEnv {
            home: "/home/a".into(),
            local_user: "a".into(),
            auth_sock: None,
            passphrase: None,
            allow_prompt: false,
        };
        let hop = HostSettings {
            label: "web1".into(),
            host_name: "10.0.0.5".into(),
            port: 2222,
            user: "root".into(),
            identity_files: vec![],
            identities_only: false,
            host_keys: HostKeyDb {
                name: "[10.0.0.5]:2222".into(),
                user_files: vec!["/home/a/.ssh/known_hosts".into()],
                global_files: vec![],
                revoked: None,
            },
            host_key_checking: HostKeyChecking::Strict,
            jumps: vec![],
        };
        let key = PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGsK1Ph7FndZih/BMkwCtZvXAhJCU7siwIMjg/d2Q/Sb",
        )
        .unwrap();
        assert_eq!(
            keyscan_command(&hop, &key, &[], &env),
            "ssh-keyscan -p 2222 -t ed25519 10.0.0.5 >> ~/.ssh/known_hosts"
        );
        assert_eq!(
            keyscan_command(&hop, &key, &["b1".into(), "b2".into()], &env),
            "ssh -J b1 b2 ssh-keyscan -p 2222 -t ed25519 10.0.0.5 >> ~/.ssh/known_hosts"
        );
        let mut aliased = hop.clone();
        aliased.host_keys.name = "web1-key".into();
        assert_eq!(
            keyscan_command(&aliased, &key, &[], &env),
            "ssh-keyscan -p 2222 -t ed25519 10.0.0.5 | sed 's/^[^ ]* /web1-key /' >> ~/.ssh/known_hosts"
        );
    }

    #[test]
    fn backoff_grows() {
        assert!(backoff(1, "x") < Duration::from_millis(500));
        assert!(backoff(4, "x") >= Duration::from_secs(2));
    }
}
