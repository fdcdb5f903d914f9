//! The benchmark's load: the integration tests' load generator
//! (tests/integration/support/load.rs) as a program, so bench/fleet.sh
//! counts failed requests exactly as the zero-downtime tests do.
//!
//!   loadgen URL STOP_FILE [RATE] [CONNECTIONS]
//!
//! Sends RATE requests/s (default 200) over CONNECTIONS kept-alive
//! connections (default 8) to URL until STOP_FILE exists, then prints one
//! line `failed=N total=M` on stdout and the first failures on stderr.
#[path = "../tests/integration/support/load.rs"]
mod load;

use std::path::Path;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: loadgen URL STOP_FILE [RATE] [CONNECTIONS]");
        std::process::exit(2);
    }
    let number = |i: usize, default: u32| {
        args.get(i).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("loadgen: not a number: {s}");
                std::process::exit(2)
            })
        })
    };
    let rate = number(2, 200);
    let connections = number(3, 8) as usize;
    let stop = Path::new(&args[1]);
    let running = load::Load::start(&args[0], connections, rate);
    while !stop.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = running.stop();
    let failures = report.failures();
    if !failures.is_empty() {
        eprintln!("loadgen: {}", report.summary());
        eprintln!("{}", report.failure_list(10));
    }
    println!("failed={} total={}", failures.len(), report.total());
}
