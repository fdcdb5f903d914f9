//! A steady stream of HTTP requests through the load balancer, recording
//! every answer, to prove (or disprove) that a deploy drops no request.
//!
//! Several threads, each with its own HTTP/1.1 keep-alive connection (plain
//! `std::net::TcpStream`, so nothing between the test and HAProxy retries
//! or hides anything), send `GET /` on a fixed schedule. Every request is a
//! [`Sample`]: when it was sent and either the version that answered (the
//! first word of the demo app's `<version> <release> <host>`) or why it
//! failed: connection refused or reset, a status other than 200, a
//! malformed answer, or no answer within [`REQUEST_TIMEOUT`]. A failed
//! connection is replaced by a new one for the next request; nothing is
//! retried.
#![allow(dead_code)] // each test uses a different part of this toolbox

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
}

/// A running load. Stop it to get the [`Report`].
pub struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    threads: Vec<JoinHandle<Vec<Sample>>>,
    rate: u32,
}

impl Load {
    /// Starts `connections` keep-alive connections to `url` (an
    /// `http://host:port` base URL) sending `rate` requests per second in
    /// total, evenly spread.
    pub fn start(url: &str, connections: usize, rate: u32) -> Load {
        let target = Target::parse(url).unwrap_or_else(|e| panic!("load: bad URL {url}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let interval = Duration::from_secs_f64(connections as f64 / f64::from(rate));
        let threads = (0..connections)
            .map(|i| {
                let target = target.clone();
                let stop = stop.clone();
                // Stagger the connections over one interval.
                let first = started + interval.mul_f64(i as f64 / connections as f64);
                std::thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || run(&target, i, started, first, interval, &stop))
                    .expect("spawn load thread")
            })
            .collect();
        Load {
            stop,
            started,
            threads,
            rate,
        }
    }

    /// Time since the load started, for marking moments in the report.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
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
    id: usize,
    started: Instant,
    first: Instant,
    interval: Duration,
    stop: &AtomicBool,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut connection: Option<BufReader<TcpStream>> = None;
    let mut next = first;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > interval * 5 {
            // Far behind (a stalled request): do not burst to catch up.
            next = now;
        }
        next += interval;
        let at = started.elapsed();
        let outcome = request(target, &mut connection);
        samples.push(Sample {
            at,
            connection: id,
            outcome,
        });
    }
    samples
}

/// One `GET /` on the kept-alive connection (opening one if needed).
fn request(
    target: &Target,
    connection: &mut Option<BufReader<TcpStream>>,
) -> Result<String, String> {
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
            "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: shipit-load\r\n\r\n",
            target.authority
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
            if status == 200 {
                Ok(body.split_whitespace().next().unwrap_or("?").to_string())
            } else {
                Err(format!(
                    "status {status}: {}",
                    body.trim().replace('\n', " ")
                ))
            }
        }
        Err(e) => {
            *connection = None;
            Err(e)
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
