//! A steady stream of HTTP requests through the load balancer, recording
//! every answer, to prove (or disprove) that a deploy drops no request.
//!
//! Several threads, each with its own HTTP/1.1 keep-alive connection (plain
//! `std::net::TcpStream`, so nothing between the test and the load balancer
//! retries or hides anything), send `GET /` on a fixed schedule. Every
//! request is a [`Sample`]: when it was sent and either the version that
//! answered (the first word of the demo app's `<version> <release> <host>`)
//! or why it failed: connection refused or reset, a status other than 200, a
//! malformed answer, or no answer within [`REQUEST_TIMEOUT`]. Each sample
//! also keeps the status code and who answered ([`Answer`]: version, release,
//! host, also for the demo app's 500s), for per-window, per-status and
//! per-host counts ([`Report`]). A failed connection is replaced by a new one
//! for the next request; nothing is retried.
//!
//! Like any HTTP client, a thread checks a kept-alive connection before it
//! reuses it, and opens a new one if the server has closed it meanwhile (an
//! nginx reload or a Caddy config change closes idle connections; no request
//! was sent on them, so none is lost). A close that crosses a request on the
//! wire still fails that request: [`LoadOptions::keep_alive`] `false` (a new
//! connection per request) leaves no idle connection to close.
#![allow(dead_code)] // each test uses a different part of this toolbox

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One request and how it ended.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was sent, since the load started.
    pub at: Duration,
    /// Which connection (thread) sent it.
    pub connection: usize,
    /// The version that answered, or what went wrong.
    pub outcome: Result<String, String>,
    /// The HTTP status, `None` if no answer came at all.
    pub status: Option<u16>,
    /// Who answered, when the body is the demo app's (`None` for a load
    /// balancer's own error pages, or no answer).
    pub answer: Option<Answer>,
    /// From sending the request to the end of its answer (or its failure).
    pub took: Duration,
    /// Whether the request went out on a connection opened for it.
    pub new_connection: bool,
}

/// Who answered a request: the demo app's `<version> <release> <host> [<revision>]`
/// (its ERROR_RATE 500s carry the same words after `error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub version: String,
    pub release: String,
    pub host: String,
    pub revision: Option<String>,
}

impl Answer {
    fn parse(body: &str) -> Option<Answer> {
        let mut words = body.split_whitespace().peekable();
        if words.peek() == Some(&"error") {
            words.next();
        }
        let version = words.next()?.to_string();
        let release = words.next()?.to_string();
        let host = words.next()?.to_string();
        let revision = words
            .next()
            .filter(|w| !w.starts_with('('))
            .map(str::to_string);
        Some(Answer {
            version,
            release,
            host,
            revision,
        })
    }
}

/// How to load. [`Load::start`] is `keep_alive: true, path: "/"`.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Parallel connections (threads).
    pub connections: usize,
    /// Requests per second in total, evenly spread.
    pub rate: u32,
    /// Reuse each connection (HTTP/1.1 keep-alive); `false`: a new connection
    /// per request, sent with `Connection: close`.
    pub keep_alive: bool,
    /// The path requested, e.g. `/`.
    pub path: String,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            connections: 8,
            rate: 200,
            keep_alive: true,
            path: "/".to_string(),
        }
    }
}

/// What the load threads and the [`Load`] handle share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Requests completed so far.
    sent: AtomicUsize,
}

/// A running load. Stop it to get the [`Report`].
pub struct Load {
    shared: Arc<Shared>,
    started: Instant,
    threads: Vec<JoinHandle<Vec<Sample>>>,
    rate: u32,
}

impl Load {
    /// Starts `connections` keep-alive connections to `url` (an
    /// `http://host:port` base URL) sending `rate` requests per second in
    /// total, evenly spread.
    pub fn start(url: &str, connections: usize, rate: u32) -> Load {
        Load::start_with(
            url,
            LoadOptions {
                connections,
                rate,
                ..LoadOptions::default()
            },
        )
    }

    /// Starts a load through `url` (an `http://host:port` base URL: any of the
    /// fleet's load balancers, [`super::fleet::Fleet::lb_url`]) as `options` say.
    pub fn start_with(url: &str, options: LoadOptions) -> Load {
        let target = Target::parse(url).unwrap_or_else(|e| panic!("load: bad URL {url}: {e}"));
        assert!(
            options.connections > 0 && options.rate > 0,
            "load: {options:?}"
        );
        let connections = options.connections;
        let shared = Arc::new(Shared::default());
        let started = Instant::now();
        let interval = Duration::from_secs_f64(connections as f64 / f64::from(options.rate));
        let threads = (0..connections)
            .map(|i| {
                let target = target.clone();
                let shared = shared.clone();
                let options = options.clone();
                // Stagger the connections over one interval.
                let first = started + interval.mul_f64(i as f64 / connections as f64);
                std::thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || run(&target, &options, i, started, first, interval, &shared))
                    .expect("spawn load thread")
            })
            .collect();
        Load {
            shared,
            started,
            threads,
            rate: options.rate,
        }
    }

    /// Requests completed (answered or failed) so far, to wait for "enough".
    pub fn sent(&self) -> usize {
        self.shared.sent.load(Ordering::SeqCst)
    }

    /// Time since the load started, for marking moments in the report.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn stop(self) -> Report {
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut samples: Vec<Sample> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread panicked"))
            .collect();
        samples.sort_by_key(|s| s.at);
        Report {
            samples,
            duration: self.started.elapsed(),
            rate: self.rate,
        }
    }
}

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    authority: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let authority = url
            .strip_prefix("http://")
            .ok_or("not http://")?
            .trim_end_matches('/');
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?;
        Ok(Target {
            addr,
            authority: authority.to_string(),
        })
    }
}

fn run(
    target: &Target,
    options: &LoadOptions,
    id: usize,
    started: Instant,
    first: Instant,
    interval: Duration,
    shared: &Shared,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut connection: Option<BufReader<TcpStream>> = None;
    let mut next = first;
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > interval * 5 {
            // Far behind (a stalled request): do not burst to catch up.
            next = now;
        }
        next += interval;
        if !options.keep_alive || connection.as_ref().is_some_and(closed_by_server) {
            connection = None;
        }
        let new_connection = connection.is_none();
        let at = started.elapsed();
        let (outcome, status, body) = request(target, options, &mut connection);
        samples.push(Sample {
            at,
            connection: id,
            outcome,
            status,
            answer: body.as_deref().and_then(Answer::parse),
            took: started.elapsed().saturating_sub(at),
            new_connection,
        });
        shared.sent.fetch_add(1, Ordering::SeqCst);
    }
    samples
}

/// Whether the server has closed (or broken) an idle kept-alive connection:
/// readable with nothing buffered means EOF or an error. What HTTP clients check
/// before reusing a pooled connection.
fn closed_by_server(connection: &BufReader<TcpStream>) -> bool {
    if !connection.buffer().is_empty() {
        return true; // bytes nobody asked for: the stream is out of step
    }
    let stream = connection.get_ref();
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(_) => true, // EOF (0) or unexpected data
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    closed || stream.set_nonblocking(false).is_err()
}

/// One `GET` on the kept-alive connection (opening one if needed): the outcome,
/// the status and the body, as far as they came.
fn request(
    target: &Target,
    options: &LoadOptions,
    connection: &mut Option<BufReader<TcpStream>>,
) -> (Result<String, String>, Option<u16>, Option<String>) {
    let result = (|| {
        if connection.is_none() {
            let stream = TcpStream::connect_timeout(&target.addr, REQUEST_TIMEOUT)
                .map_err(|e| format!("connect: {e}"))?;
            stream
                .set_read_timeout(Some(REQUEST_TIMEOUT))
                .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
                .and_then(|()| stream.set_nodelay(true))
                .map_err(|e| format!("socket options: {e}"))?;
            *connection = Some(BufReader::new(stream));
        }
        let reader = connection.as_mut().expect("connection just opened");
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: shipit-load\r\n{}\r\n",
            options.path,
            target.authority,
            if options.keep_alive {
                ""
            } else {
                "Connection: close\r\n"
            }
        );
        reader
            .get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let (status, body, close) = read_response(reader)?;
        Ok((status, body, close))
    })();
    match result {
        Ok((status, body, close)) => {
            if close {
                *connection = None;
            }
            let outcome = if status == 200 {
                Ok(body.split_whitespace().next().unwrap_or("?").to_string())
            } else {
                Err(format!(
                    "status {status}: {}",
                    body.trim().replace('\n', " ")
                ))
            };
            (outcome, Some(status), Some(body))
        }
        Err(e) => {
            *connection = None;
            (Err(e), None, None)
        }
    }
}

/// Status, body and whether the server closes the connection.
fn read_response(reader: &mut BufReader<TcpStream>) -> Result<(u16, String, bool), String> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed before an answer".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut length: Option<usize> = None;
    let mut close = line.starts_with("HTTP/1.0");
    loop {
        let mut header = String::new();
        reader
            .read_line(&mut header)
            .map_err(|e| format!("read headers: {e}"))?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => length = value.parse().ok(),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "transfer-encoding" => return Err(format!("unsupported transfer-encoding {value}")),
            _ => {}
        }
    }
    let body = match length {
        Some(n) => {
            let mut body = vec![0; n];
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("read body: {e}"))?;
            body
        }
        None => {
            close = true;
            let mut body = Vec::new();
            reader
                .read_to_end(&mut body)
                .map_err(|e| format!("read body: {e}"))?;
            body
        }
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
}

/// Everything a load saw.
pub struct Report {
    pub samples: Vec<Sample>,
    pub duration: Duration,
    /// Requests per second asked for.
    pub rate: u32,
}

impl Report {
    pub fn total(&self) -> usize {
        self.samples.len()
    }

    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.outcome.is_err()).collect()
    }

    /// Successful answers per version among requests sent in `range`.
    pub fn versions(&self, range: std::ops::Range<Duration>) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in &self.samples {
            if let (true, Ok(version)) = (range.contains(&s.at), &s.outcome) {
                *out.entry(version.clone()).or_default() += 1;
            }
        }
        out
    }

    /// Samples sent in `range`.
    pub fn within(&self, range: std::ops::Range<Duration>) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| range.contains(&s.at))
    }

    /// Answers per HTTP status among requests sent in `range`; `None` counts the
    /// requests that got no HTTP answer at all (refused, reset, timed out).
    pub fn statuses(&self, range: std::ops::Range<Duration>) -> BTreeMap<Option<u16>, usize> {
        let mut out = BTreeMap::new();
        for s in self.within(range) {
            *out.entry(s.status).or_default() += 1;
        }
        out
    }

    /// Requests sent in `range` per key, for any grouping: e.g.
    /// `count_by(r, |s| s.answer.as_ref().map(|a| a.host.clone()))` counts answers
    /// (of any status) per host. Samples the key maps to `None` are left out.
    pub fn count_by(
        &self,
        range: std::ops::Range<Duration>,
        key: impl Fn(&Sample) -> Option<String>,
    ) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.within(range) {
            if let Some(k) = key(s) {
                *out.entry(k).or_default() += 1;
            }
        }
        out
    }

    /// Successful (200) answers per host among requests sent in `range`.
    pub fn hosts(&self, range: std::ops::Range<Duration>) -> BTreeMap<String, usize> {
        self.count_by(range, |s| {
            s.outcome.as_ref().ok()?;
            s.answer.as_ref().map(|a| a.host.clone())
        })
    }

    /// Successful (200) answers per `version@host` among requests sent in `range`:
    /// which host served which version when.
    pub fn versions_by_host(&self, range: std::ops::Range<Duration>) -> BTreeMap<String, usize> {
        self.count_by(range, |s| {
            s.outcome.as_ref().ok()?;
            s.answer
                .as_ref()
                .map(|a| format!("{}@{}", a.version, a.host))
        })
    }

    /// `(failed, total)` among requests sent in `range`: the error rate a gate sees.
    /// Failed: anything but a 200, unanswered requests included.
    pub fn failed_of(&self, range: std::ops::Range<Duration>) -> (usize, usize) {
        self.within(range).fold((0, 0), |(failed, total), s| {
            (failed + usize::from(s.outcome.is_err()), total + 1)
        })
    }

    /// Per window of `width` from the start: `(window start, failed, total)`,
    /// every window of the run included (empty ones as `(t, 0, 0)`).
    pub fn failures_per_window(&self, width: Duration) -> Vec<(Duration, usize, usize)> {
        assert!(!width.is_zero(), "failures_per_window: zero width");
        let windows = (self.duration.as_secs_f64() / width.as_secs_f64()).ceil() as usize;
        let mut out: Vec<(Duration, usize, usize)> = (0..windows.max(1))
            .map(|i| (width * i as u32, 0, 0))
            .collect();
        for s in &self.samples {
            let i = (s.at.as_secs_f64() / width.as_secs_f64()) as usize;
            if let Some(w) = out.get_mut(i) {
                w.2 += 1;
                w.1 += usize::from(s.outcome.is_err());
            }
        }
        out
    }

    /// Per window of `width`: requests, then a column per status (`-` for no
    /// answer), as a table for assertion messages.
    pub fn status_table(&self, width: Duration) -> String {
        let all = self.statuses(Duration::ZERO..Duration::MAX);
        let name = |k: &Option<u16>| k.map_or("-".to_string(), |c| c.to_string());
        let mut out = format!("{:>8} {:>6}", "from", "total");
        for k in all.keys() {
            let _ = write!(out, " {:>5}", name(k));
        }
        out.push('\n');
        for (start, _, total) in self.failures_per_window(width) {
            let counts = self.statuses(start..start + width);
            let _ = write!(out, "{:>7.1}s {total:>6}", start.as_secs_f64());
            for k in all.keys() {
                let _ = write!(out, " {:>5}", counts.get(k).copied().unwrap_or(0));
            }
            out.push('\n');
        }
        out
    }

    /// Whole seconds of the run in which no request was sent at all.
    pub fn silent_seconds(&self) -> Vec<u64> {
        let seconds = self.duration.as_secs();
        (0..seconds)
            .filter(|sec| !self.samples.iter().any(|s| s.at.as_secs() == *sec))
            .collect()
    }

    /// One line: `1234 requests in 6.2 s (199/s), 0 failed; v1 600, v2 634`.
    pub fn summary(&self) -> String {
        let versions = self.versions(Duration::ZERO..Duration::MAX);
        format!(
            "{} requests in {:.1} s ({:.0}/s over {} connections), {} failed; answered by {}",
            self.total(),
            self.duration.as_secs_f64(),
            self.total() as f64 / self.duration.as_secs_f64().max(0.001),
            self.samples
                .iter()
                .map(|s| s.connection)
                .max()
                .map_or(0, |m| m + 1),
            self.failures().len(),
            versions
                .iter()
                .map(|(v, n)| format!("{v} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Per second: answers per version and failures.
    pub fn timeline(&self) -> String {
        let versions: Vec<String> = self
            .versions(Duration::ZERO..Duration::MAX)
            .into_keys()
            .collect();
        let mut out = format!("{:>4}", "sec");
        for v in &versions {
            let _ = write!(out, " {v:>6}");
        }
        out.push_str(" failed\n");
        for sec in 0..=self.duration.as_secs() {
            let in_sec: Vec<&Sample> = self
                .samples
                .iter()
                .filter(|s| s.at.as_secs() == sec)
                .collect();
            let _ = write!(out, "{sec:>4}");
            for v in &versions {
                let n = in_sec
                    .iter()
                    .filter(|s| s.outcome.as_ref().is_ok_and(|got| got == v))
                    .count();
                let _ = write!(out, " {n:>6}");
            }
            let failed = in_sec.iter().filter(|s| s.outcome.is_err()).count();
            let _ = writeln!(out, " {failed:>6}");
        }
        out
    }

    /// The first `n` failures, one per line.
    pub fn failure_list(&self, n: usize) -> String {
        self.failures()
            .iter()
            .take(n)
            .map(|s| {
                format!(
                    "  {:>7.3}s conn {}: {}",
                    s.at.as_secs_f64(),
                    s.connection,
                    s.outcome.as_ref().unwrap_err()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `GET url` on a fresh connection with a generous timeout, for the odd
/// long request (`/slow?seconds=N`). Status and body, or why not.
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or("not http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let target = Target::parse(&format!("http://{authority}"))?;
    let stream =
        TcpStream::connect_timeout(&target.addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n",
        if path.is_empty() { "/" } else { path }
    );
    reader
        .get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    read_response(&mut reader).map(|(status, body, _)| (status, body))
}
