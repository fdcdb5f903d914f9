//! A scripted stand-in for hosts, for unit tests of the executor's logic
//! only. Integration tests use real sshd hosts.

use std::sync::Mutex;
use std::time::Duration;

use super::{ExecObserver, ExecRequest, Exit, Output, Transport, TransportError};

/// A rule: when `host` (or any host, for `*`) runs a command containing
/// `needle`, answer with `exit` after `delay`.
struct Rule {
    host: String,
    needle: String,
    exit: Option<u32>,
    delay: Duration,
    /// What it says on stderr when it fails.
    stderr: Option<String>,
}

#[derive(Default)]
pub struct FakeTransport {
    rules: Mutex<Vec<Rule>>,
    /// Every command run, in the order they started: (host, command).
    pub log: Mutex<Vec<(String, String)>>,
}

impl FakeTransport {
    pub fn fail(self, host: &str, needle: &str, code: u32) -> Self {
        self.rules.lock().unwrap().push(Rule {
            host: host.into(),
            needle: needle.into(),
            exit: Some(code),
            delay: Duration::ZERO,
            stderr: None,
        });
        self
    }

    /// Like [`FakeTransport::fail`], saying `stderr`.
    pub fn fail_saying(self, host: &str, needle: &str, code: u32, stderr: &str) -> Self {
        self.rules.lock().unwrap().push(Rule {
            host: host.into(),
            needle: needle.into(),
            exit: Some(code),
            delay: Duration::ZERO,
            stderr: Some(stderr.into()),
        });
        self
    }

    pub fn delay(self, host: &str, needle: &str, delay: Duration) -> Self {
        self.rules.lock().unwrap().push(Rule {
            host: host.into(),
            needle: needle.into(),
            exit: None,
            delay,
            stderr: None,
        });
        self
    }

    /// Every command's text, in the order they ran.
    pub fn commands(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// `host:label` for every command whose text contains one of `labels`.
    pub fn steps(&self, labels: &[&str]) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(host, cmd)| {
                labels
                    .iter()
                    .find(|l| cmd.contains(*l))
                    .map(|l| format!("{host}:{}", l.trim_start_matches("shipit:")))
            })
            .collect()
    }
}

impl Transport for FakeTransport {
    async fn exec(
        &self,
        host: &str,
        request: ExecRequest,
        observer: &dyn ExecObserver,
    ) -> Result<Output, TransportError> {
        // What ran: the command line, and a script sent on stdin if any.
        let mut ran = request.command.clone();
        if let Some(stdin) = request
            .stdin
            .as_ref()
            .and_then(|s| s.as_bytes())
            .filter(|s| s.len() < 64 * 1024)
        {
            ran.push_str("\n<stdin>\n");
            ran.push_str(&String::from_utf8_lossy(stdin));
        }
        self.log
            .lock()
            .unwrap()
            .push((host.to_string(), ran.clone()));
        if let Some(stdin) = &request.stdin {
            observer.stdin_progress(stdin.len());
        }
        let (mut code, mut delay) = (0, Duration::ZERO);
        let mut said = b"scripted failure\n".to_vec();
        for rule in self.rules.lock().unwrap().iter() {
            if (rule.host == "*" || rule.host == host) && ran.contains(&rule.needle) {
                if let Some(exit) = rule.exit {
                    code = exit;
                }
                if let Some(stderr) = &rule.stderr {
                    said = format!("{stderr}\n").into_bytes();
                }
                delay = delay.max(rule.delay);
            }
        }
        // Like a real transport: a command that runs past its timeout
        // fails with one.
        if let Some(limit) = request.timeout.filter(|limit| *limit < delay) {
            tokio::time::sleep(limit).await;
            return Err(TransportError::Timeout {
                host: host.to_string(),
                what: format!("`{}`", request.command),
                after: limit,
            });
        }
        tokio::time::sleep(delay).await;
        Ok(Output {
            exit: Exit::Code(code),
            stdout: Vec::new(),
            stderr: if code == 0 { Vec::new() } else { said },
        })
    }
}
