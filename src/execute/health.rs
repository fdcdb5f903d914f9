//! Health checks: one try (`probe`), from the machine running shipit or on
//! the host, polling until the host passes (`wait_healthy`), and the pure
//! rules that judge a run of tries ([`Streak`] for passing, [`Watching`]
//! for staying healthy). When a host never passes, the error says what the
//! check last saw, so a failed deploy explains itself.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::CheckFrom;
use crate::host::health as on_host;
use crate::plan::{CheckKind, HealthCheck};
use crate::shell::Cmd;
use crate::transport::{ExecRequest, Quiet, Transport};

/// The HTTP client for health checks, shared by every host and command of
/// a run. Building it loads the system's TLS roots, a few milliseconds of
/// file reading that [`prepare_client`] moves off the critical path.
pub fn client() -> reqwest::Client {
    CLIENT.get_or_init(build_client).clone()
}

/// Starts building the client in the background, while shipit connects.
pub fn prepare_client() {
    if CLIENT.get().is_none() {
        std::thread::spawn(|| {
            CLIENT.get_or_init(build_client);
        });
    }
}

static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();

fn build_client() -> reqwest::Client {
    // reqwest is built without a bundled TLS provider so that only one
    // crypto library (ring, also used by SSH) is compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("shipit/", env!("CARGO_PKG_VERSION")))
        // Each probe must see the host as it is now, on a fresh connection.
        .pool_max_idle_per_host(0)
        .build()
        .expect("the HTTP client configuration is static and valid")
}

/// What one try saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Healthy,
    /// An HTTP answer that is not the expected one.
    Unexpected {
        status: u16,
        body: String,
    },
    /// No answer (the reason), or a command check that failed (how).
    Error(String),
}

impl Probe {
    pub fn describe(&self, check: &HealthCheck) -> String {
        match self {
            Probe::Healthy => "healthy".into(),
            Probe::Unexpected { status, body } => {
                let mut why = Vec::new();
                if let CheckKind::Http {
                    expect_status,
                    expect_body,
                    ..
                } = &check.kind
                {
                    if status != expect_status {
                        why.push(format!("status {status} (want {expect_status})"));
                    }
                    if let Some(expected) = expect_body
                        && !body.contains(expected.as_str())
                    {
                        why.push(format!("body lacks {expected:?}"));
                    }
                }
                format!("{}; body: {:?}", why.join(", "), shorten(body, 200))
            }
            Probe::Error(e) => e.clone(),
        }
    }
}

/// Checks one response against what an HTTP check expects.
pub fn judge(expect_status: u16, expect_body: Option<&str>, status: u16, body: &str) -> Probe {
    let status_ok = status == expect_status;
    let body_ok = expect_body.is_none_or(|b| body.contains(b));
    if status_ok && body_ok {
        Probe::Healthy
    } else {
        Probe::Unexpected {
            status,
            body: body.to_string(),
        }
    }
}

/// How a try reaches a host: the run's transport (for checks on the host)
/// and the HTTP client (for checks from here).
pub struct Prober<'a, T: Transport> {
    pub client: &'a reqwest::Client,
    pub transport: &'a T,
    /// `ssh.command_timeout`, the longest any command may take.
    pub command_timeout: Option<Duration>,
}

/// A try on the host may take the check's own limit plus this, for the
/// SSH round trip and the login shell.
const HOST_SLACK: Duration = Duration::from_secs(10);

impl<T: Transport> Prober<'_, T> {
    /// One try of `check` on `host`: what it sees now.
    pub async fn probe(&self, host: &str, check: &HealthCheck) -> Probe {
        match &check.kind {
            CheckKind::Http {
                url,
                expect_status,
                expect_body,
                from: CheckFrom::Controller,
            } => {
                http_probe(self.client, url, check.request_timeout, |status, body| {
                    judge(*expect_status, expect_body.as_deref(), status, body)
                })
                .await
            }
            CheckKind::Http {
                url,
                expect_status,
                expect_body,
                from: CheckFrom::Host,
            } => {
                let cmd = on_host::http_get(url, check.request_timeout);
                match self.on_host(host, &cmd, check.request_timeout).await {
                    Ok(out) if out.exit.success() => match on_host::parse_response(&out.stdout) {
                        Ok((status, body)) => {
                            judge(*expect_status, expect_body.as_deref(), status, &body)
                        }
                        Err(e) => Probe::Error(e),
                    },
                    Ok(out) => Probe::Error(failed_output(&out)),
                    Err(e) => Probe::Error(e),
                }
            }
            CheckKind::Command { cmd } => {
                let limited = on_host::limited(cmd.clone(), check.request_timeout);
                match self.on_host(host, &limited, check.request_timeout).await {
                    Ok(out) if out.exit.success() => Probe::Healthy,
                    Ok(out) if out.exit == crate::transport::Exit::Code(on_host::TIMED_OUT) => {
                        Probe::Error(format!(
                            "did not finish within {} (health.request_timeout)",
                            humantime::format_duration(check.request_timeout)
                        ))
                    }
                    Ok(out) => Probe::Error(failed_output(&out)),
                    Err(e) => Probe::Error(e),
                }
            }
        }
    }

    /// Runs one try's command on `host`; secrets travel on stdin.
    async fn on_host(
        &self,
        host: &str,
        cmd: &Cmd,
        limit: Duration,
    ) -> Result<crate::transport::Output, String> {
        let timeout = Some(match self.command_timeout {
            Some(most) => most.min(limit + HOST_SLACK),
            None => limit + HOST_SLACK,
        });
        let request = if cmd.has_secrets() {
            ExecRequest {
                command: "sh -s".into(),
                stdin: Some(bytes::Bytes::from(format!("{}\n", cmd.render())).into()),
                timeout,
            }
        } else {
            ExecRequest {
                command: cmd.render(),
                stdin: None,
                timeout,
            }
        };
        self.transport
            .exec(host, request, &Quiet)
            .await
            .map_err(|e| e.to_string())
    }
}

impl<T: Transport, L: Transport> super::Executor<'_, T, L> {
    /// How this run's health checks reach the hosts.
    pub(super) fn prober(&self) -> Prober<'_, T> {
        Prober {
            client: &self.http,
            transport: self.transport,
            command_timeout: self.command_timeout,
        }
    }
}

/// A failed command's status and its last lines of output.
fn failed_output(out: &crate::transport::Output) -> String {
    let mut said = out.stderr_tail(3);
    if said.is_empty() {
        said = crate::transport::tail(&out.stdout, 3);
    }
    if said.is_empty() {
        format!("{} (no output)", out.exit)
    } else {
        format!("{}: {}", out.exit, said.replace('\n', " / "))
    }
}

/// One request from here: what the endpoint answers now.
async fn http_probe(
    client: &reqwest::Client,
    url: &str,
    request_timeout: Duration,
    judge: impl Fn(u16, &str) -> Probe,
) -> Probe {
    let response = client.get(url).timeout(request_timeout).send().await;
    match response {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.text().await {
                Ok(body) => judge(status, &body),
                Err(e) => Probe::Error(format!(
                    "status {status}, body unreadable: {}",
                    error_chain(&e)
                )),
            }
        }
        Err(e) => Probe::Error(error_chain(&e)),
    }
}

/// reqwest's top-level message is "error sending request"; the cause
/// ("Connection refused") is what the user needs.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn shorten(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// Passing tries in a row, towards `healthy_threshold`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    need: u32,
    now: u32,
    best: u32,
}

impl Streak {
    pub fn new(healthy_threshold: u32) -> Streak {
        Streak {
            need: healthy_threshold.max(1),
            ..Streak::default()
        }
    }

    /// Counts one try; true once `need` tries in a row passed.
    pub fn see(&mut self, passed: bool) -> bool {
        self.now = if passed { self.now + 1 } else { 0 };
        self.best = self.best.max(self.now);
        self.now >= self.need
    }

    /// Why it is not healthy yet, when more than one pass is needed.
    pub fn shortfall(&self) -> Option<String> {
        (self.need > 1).then(|| {
            format!(
                "never passed {} times in a row (health.healthy_threshold = {}; at best {} in a row)",
                self.need, self.need, self.best
            )
        })
    }
}

/// Polls until `check.healthy_threshold` tries in a row pass, or
/// `check.timeout` passes. Ok(tries) or Err(why). `hurry` cuts it short.
pub async fn wait_healthy<T: Transport>(
    prober: &Prober<'_, T>,
    host: &str,
    check: &HealthCheck,
    hurry: &tokio_util::sync::CancellationToken,
) -> Result<usize, String> {
    let deadline = Instant::now() + check.timeout;
    let mut tries = 0;
    let mut streak = Streak::new(check.healthy_threshold);
    loop {
        tries += 1;
        let started = Instant::now();
        let seen = tokio::select! {
            seen = prober.probe(host, check) => seen,
            () = hurry.cancelled() => return Err("health check cut short by a second interrupt".into()),
        };
        if streak.see(seen == Probe::Healthy) {
            return Ok(tries);
        }
        let next = started + check.interval;
        if next >= deadline {
            let mut why = format!(
                "not healthy after {} ({tries} tr{})",
                humantime::format_duration(round(check.timeout)),
                if tries == 1 { "y" } else { "ies" },
            );
            if let Some(short) = streak.shortfall() {
                why.push_str("; ");
                why.push_str(&short);
            }
            let last = match &check.kind {
                CheckKind::Http {
                    url,
                    from: CheckFrom::Controller,
                    ..
                } => format!("last answer from {url}"),
                CheckKind::Http {
                    url,
                    from: CheckFrom::Host,
                    ..
                } => format!("last answer from {url} on {host}"),
                CheckKind::Command { cmd } => {
                    format!("last run of `{}`", crate::plan::command_line(cmd))
                }
            };
            let said = match seen {
                // The last try passed: the streak only fell short.
                Probe::Healthy => "passed".to_string(),
                _ => seen.describe(check),
            };
            why.push_str(&format!("; {last}: {said}"));
            if let (
                Probe::Error(_),
                CheckKind::Http {
                    from: CheckFrom::Controller,
                    ..
                },
            ) = (&seen, &check.kind)
            {
                why.push_str(
                    " (the check runs from the machine running shipit; if the app listens only on the host \
                     itself, such as on 127.0.0.1, or this machine cannot reach its port, check from the host: \
                     health.from = \"host\")",
                );
            }
            return Err(why);
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = hurry.cancelled() => return Err("health check cut short by a second interrupt".into()),
        }
    }
}

/// Failed tries in a row that fail a host being watched (after it is back
/// in service): one failed answer can be a blip, two are a trend.
pub const FAILS_IN_A_ROW: u32 = 2;

/// A host watched once back in service: how its tries count. Failures
/// before `start_period` (since its restart) do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watching {
    start_period: Duration,
    in_a_row: u32,
}

impl Watching {
    pub fn new(start_period: Duration) -> Watching {
        Watching {
            start_period,
            in_a_row: 0,
        }
    }

    /// Counts a try made `since_restart` after the host's restart; true
    /// when the host has now failed [`FAILS_IN_A_ROW`] counted tries in a row.
    pub fn see(&mut self, since_restart: Duration, passed: bool) -> bool {
        if passed {
            self.in_a_row = 0;
        } else if since_restart >= self.start_period {
            self.in_a_row += 1;
        }
        self.in_a_row >= FAILS_IN_A_ROW
    }

    pub fn in_a_row(&self) -> u32 {
        self.in_a_row
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::local::LocalTransport;

    fn check(kind: CheckKind) -> HealthCheck {
        HealthCheck {
            kind,
            timeout: Duration::from_millis(300),
            interval: Duration::from_millis(100),
            request_timeout: Duration::from_millis(100),
            healthy_threshold: 1,
            start_period: Duration::ZERO,
            min_healthy_time: Duration::ZERO,
        }
    }

    fn http(url: &str, body: Option<&str>, from: CheckFrom) -> HealthCheck {
        check(CheckKind::Http {
            url: url.into(),
            expect_status: 200,
            expect_body: body.map(Into::into),
            from,
        })
    }

    fn prober<T: Transport>(transport: &T) -> Prober<'_, T> {
        static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        Prober {
            client: HTTP.get_or_init(client),
            transport,
            command_timeout: None,
        }
    }

    #[test]
    fn judges_status_and_body() {
        let c = http("http://x/", Some("release=2"), CheckFrom::Controller);
        assert_eq!(
            judge(200, Some("release=2"), 200, "ok release=2 v"),
            Probe::Healthy
        );
        let p = judge(200, Some("release=2"), 200, "ok release=1");
        assert_eq!(
            p.describe(&c),
            "body lacks \"release=2\"; body: \"ok release=1\""
        );
        let p = judge(200, Some("release=2"), 503, "starting");
        assert_eq!(
            p.describe(&c),
            "status 503 (want 200), body lacks \"release=2\"; body: \"starting\""
        );
        assert_eq!(judge(200, None, 200, ""), Probe::Healthy);
    }

    /// `healthy_threshold`: passes must come in a row; a failure starts over.
    #[test]
    fn a_streak_needs_passes_in_a_row() {
        let mut s = Streak::new(3);
        let seen: Vec<bool> = [true, false, true, true, false, true, true, true]
            .into_iter()
            .map(|p| s.see(p))
            .collect();
        assert_eq!(
            seen,
            [false, false, false, false, false, false, false, true]
        );
        let mut flapping = Streak::new(3);
        for i in 0..20 {
            assert!(!flapping.see(i % 2 == 0));
        }
        assert_eq!(
            flapping.shortfall().unwrap(),
            "never passed 3 times in a row (health.healthy_threshold = 3; at best 1 in a row)"
        );
        let mut one = Streak::new(1);
        assert!(one.see(true));
        assert_eq!(one.shortfall(), None);
    }

    /// `start_period`: failures that soon after the restart do not count
    /// while watching; after it, two in a row fail the host.
    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let secs = Duration::from_secs;
        let mut w = Watching::new(secs(5));
        assert!(!w.see(secs(1), false));
        assert!(!w.see(secs(2), false));
        assert!(!w.see(secs(3), false), "still starting");
        assert_eq!(w.in_a_row(), 0);
        assert!(!w.see(secs(5), false));
        assert!(!w.see(secs(6), true), "a pass starts over");
        assert!(!w.see(secs(7), false));
        assert!(w.see(secs(8), false));
        let mut at_once = Watching::new(Duration::ZERO);
        assert!(!at_once.see(Duration::ZERO, false));
        assert!(at_once.see(Duration::ZERO, false));
    }

    #[tokio::test]
    async fn gives_up_with_the_last_answer_and_a_hint() {
        // Port 1 on loopback: nothing listens, so every try is refused.
        let c = http("http://127.0.0.1:1/health", None, CheckFrom::Controller);
        let err = wait_healthy(&prober(&LocalTransport), "web1", &c, &Default::default())
            .await
            .unwrap_err();
        assert!(err.starts_with("not healthy after 300ms ("), "{err}");
        assert!(
            err.contains("; last answer from http://127.0.0.1:1/health: "),
            "{err}"
        );
        assert!(
            err.contains("Connection refused") || err.contains("connect"),
            "{err}"
        );
        assert!(
            err.ends_with("check from the host: health.from = \"host\")"),
            "{err}"
        );
    }

    /// From the host: the same message, naming the host, without the hint.
    #[tokio::test]
    async fn checks_from_the_host_say_what_the_host_saw() {
        let c = http("http://127.0.0.1:1/health", None, CheckFrom::Host);
        let err = wait_healthy(&prober(&LocalTransport), "local", &c, &Default::default())
            .await
            .unwrap_err();
        assert!(err.starts_with("not healthy after 300ms ("), "{err}");
        assert!(
            err.ends_with(
                "; last answer from http://127.0.0.1:1/health on local: exit status 7: cannot connect to \
                 127.0.0.1:1: Connection refused"
            ),
            "{err}"
        );
        assert!(!err.contains("health.from"), "{err}");
    }

    #[tokio::test]
    async fn command_checks_pass_on_exit_0_and_have_a_time_limit() {
        let mut c = check(CheckKind::Command {
            cmd: Cmd::shell("test \"$WANT\" = yes").env("WANT", "yes"),
        });
        assert_eq!(
            wait_healthy(&prober(&LocalTransport), "local", &c, &Default::default()).await,
            Ok(1)
        );
        c.kind = CheckKind::Command {
            cmd: Cmd::shell("echo stuck >&2; exit 3"),
        };
        let err = wait_healthy(&prober(&LocalTransport), "local", &c, &Default::default())
            .await
            .unwrap_err();
        assert!(
            err.ends_with("last run of `echo stuck >&2; exit 3`: exit status 3: stuck"),
            "{err}"
        );
        c.kind = CheckKind::Command {
            cmd: Cmd::shell("sleep 5"),
        };
        c.request_timeout = Duration::from_millis(200);
        c.timeout = Duration::from_millis(250);
        let err = wait_healthy(&prober(&LocalTransport), "local", &c, &Default::default())
            .await
            .unwrap_err();
        assert!(
            err.ends_with("did not finish within 200ms (health.request_timeout)"),
            "{err}"
        );
    }
}
