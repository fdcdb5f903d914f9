//! Polling a health URL until the new release answers as expected, from the
//! machine running shipit. When it never does, the error says what the
//! endpoint last answered, so a failed deploy explains itself.

use std::time::Duration;

use tokio::time::Instant;

use crate::plan::HttpCheck;

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

/// What one request saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Healthy,
    Unexpected { status: u16, body: String },
    Error(String),
}

impl Probe {
    pub fn describe(&self, check: &HttpCheck) -> String {
        match self {
            Probe::Healthy => "healthy".into(),
            Probe::Unexpected { status, body } => {
                let mut why = Vec::new();
                if *status != check.expect_status {
                    why.push(format!("status {status} (want {})", check.expect_status));
                }
                if let Some(expected) = &check.expect_body
                    && !body.contains(expected.as_str())
                {
                    why.push(format!("body lacks {expected:?}"));
                }
                format!("{}; body: {:?}", why.join(", "), shorten(body, 200))
            }
            Probe::Error(e) => e.clone(),
        }
    }
}

/// Checks one response against the expectations.
pub fn judge(check: &HttpCheck, status: u16, body: &str) -> Probe {
    let status_ok = status == check.expect_status;
    let body_ok = check
        .expect_body
        .as_ref()
        .is_none_or(|b| body.contains(b.as_str()));
    if status_ok && body_ok {
        Probe::Healthy
    } else {
        Probe::Unexpected {
            status,
            body: body.to_string(),
        }
    }
}

/// One request: what the endpoint answers now.
pub async fn probe(client: &reqwest::Client, check: &HttpCheck) -> Probe {
    let response = client
        .get(&check.url)
        .timeout(check.request_timeout)
        .send()
        .await;
    match response {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.text().await {
                Ok(body) => judge(check, status, &body),
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

/// Polls until healthy or `check.timeout` passes. Ok(tries) or Err(why).
/// `hurry` cuts the wait short.
pub async fn wait_healthy(
    client: &reqwest::Client,
    check: &HttpCheck,
    hurry: &tokio_util::sync::CancellationToken,
) -> Result<usize, String> {
    let deadline = Instant::now() + check.timeout;
    let mut tries = 0;
    loop {
        tries += 1;
        let started = Instant::now();
        let seen = tokio::select! {
            seen = probe(client, check) => seen,
            () = hurry.cancelled() => return Err("health check cut short by a second interrupt".into()),
        };
        if seen == Probe::Healthy {
            return Ok(tries);
        }
        let next = started + check.interval;
        if next >= deadline {
            return Err(format!(
                "not healthy after {} ({tries} tr{}); last answer from {}: {}",
                humantime::format_duration(round(check.timeout)),
                if tries == 1 { "y" } else { "ies" },
                check.url,
                seen.describe(check)
            ));
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = hurry.cancelled() => return Err("health check cut short by a second interrupt".into()),
        }
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: Option<&str>) -> HttpCheck {
        HttpCheck {
            url: "http://127.0.0.1:1/health".into(),
            expect_status: 200,
            expect_body: body.map(Into::into),
            timeout: Duration::from_millis(300),
            interval: Duration::from_millis(100),
            request_timeout: Duration::from_millis(100),
        }
    }

    #[test]
    fn judges_status_and_body() {
        let c = check(Some("release=2"));
        assert_eq!(judge(&c, 200, "ok release=2 v"), Probe::Healthy);
        let p = judge(&c, 200, "ok release=1");
        assert_eq!(
            p.describe(&c),
            "body lacks \"release=2\"; body: \"ok release=1\""
        );
        let p = judge(&c, 503, "starting");
        assert_eq!(
            p.describe(&c),
            "status 503 (want 200), body lacks \"release=2\"; body: \"starting\""
        );
        assert_eq!(judge(&check(None), 200, ""), Probe::Healthy);
    }

    #[tokio::test]
    async fn gives_up_with_the_last_answer() {
        // Port 1 on loopback: nothing listens, so every try is refused.
        let client = client();
        let err = wait_healthy(&client, &check(None), &Default::default())
            .await
            .unwrap_err();
        assert!(
            err.starts_with("not healthy after 300ms (3 tries)"),
            "{err}"
        );
        assert!(
            err.contains("Connection refused") || err.contains("connect"),
            "{err}"
        );
    }
}
