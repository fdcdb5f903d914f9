//! The arithmetic of the haproxy gate, apart from asking HAProxy (which
//! `mod.rs` does through the `[lb]` driver): the share of 5xx among the
//! answers the measured servers gave within the window.
//!
//! HAProxy counts answers per server since it started (`hrsp_1xx` …
//! `hrsp_other`), so the gate samples the counters every interval and adds
//! up the differences between samples, per load balancer and server:
//!
//! - a server's first sample is its baseline: it counts nothing;
//! - a counter lower than in the previous sample means HAProxy was
//!   reloaded in between: what it counts now are answers since the reload,
//!   all new (a reload whose new counts have already outgrown the old ones
//!   by the next sample goes unseen, and that interval is undercounted;
//!   with samples seconds apart that takes a server answering more in
//!   seconds than in its whole life before);
//! - a server a sample does not list adds nothing and is named; when it is
//!   listed again the difference covers the gap.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::lb::{Answers, Counted};
use crate::plan::gates::percent;
use crate::report::{Measured, Verdict};

/// Everything sampled so far during one bake.
#[derive(Debug, Default)]
pub struct Tally {
    /// The last counters seen, per load balancer and host.
    last: BTreeMap<(String, String), Answers>,
    /// Answers per host since its baseline, resets accounted for.
    totals: BTreeMap<String, Answers>,
    /// `totals` after each sample, with when it was taken.
    samples: Vec<(Duration, BTreeMap<String, Answers>)>,
}

/// What one sample noticed besides the counts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sampled {
    /// Hosts a load balancer did not list.
    pub missing: Vec<String>,
    /// Load balancers whose counters went back (reloaded).
    pub resets: Vec<String>,
}

/// The answers of the measured hosts within a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub answers: Answers,
    /// How long the window is.
    pub span: Duration,
}

impl Tally {
    /// Adds a sample taken `at` into the bake.
    pub fn add(&mut self, at: Duration, counted: &[Counted]) -> Sampled {
        let mut missing = BTreeSet::new();
        let mut resets = BTreeSet::new();
        for c in counted {
            let Some(now) = c.answers else {
                missing.insert(c.host.clone());
                continue;
            };
            let key = (c.balancer.clone(), c.host.clone());
            let new = match self.last.get(&key) {
                None => Answers::default(),
                Some(before) if now.total < before.total || now.errors < before.errors => {
                    resets.insert(c.balancer.clone());
                    now
                }
                Some(before) => Answers {
                    total: now.total - before.total,
                    errors: now.errors - before.errors,
                },
            };
            self.last.insert(key, now);
            let total = self.totals.entry(c.host.clone()).or_default();
            total.total += new.total;
            total.errors += new.errors;
        }
        self.samples.push((at, self.totals.clone()));
        Sampled {
            missing: missing.into_iter().collect(),
            resets: resets.into_iter().collect(),
        }
    }

    /// The answers of `hosts` from the start of the window to the last
    /// sample: since the first sample, or over the last `window` (from the
    /// latest sample at least that old, else the first).
    pub fn counts(&self, hosts: &[String], window: Option<Duration>) -> Counts {
        let (Some((first_at, first)), Some((now, totals))) =
            (self.samples.first(), self.samples.last())
        else {
            return Counts::default();
        };
        let (from_at, from) = match window {
            None => (*first_at, first),
            Some(w) => self
                .samples
                .iter()
                .rev()
                .find(|(at, _)| *at + w <= *now)
                .map_or((*first_at, first), |(at, t)| (*at, t)),
        };
        let mut answers = Answers::default();
        for host in hosts {
            let end = totals.get(host).copied().unwrap_or_default();
            let start = from.get(host).copied().unwrap_or_default();
            answers.total += end.total - start.total;
            answers.errors += end.errors - start.errors;
        }
        Counts {
            answers,
            span: *now - from_at,
        }
    }
}

/// The verdict on `counts`, the values measured and the words for them.
pub fn judge(
    counts: Counts,
    sampled: Sampled,
    hosts: &[String],
    max_error_rate: f64,
    min_requests: u64,
) -> (Verdict, Measured, String) {
    let Answers { total, errors } = counts.answers;
    let rate = (total > 0).then(|| errors as f64 / total as f64);
    let from = format!("from {} in {}", hosts.join(", "), span(counts.span));
    let (verdict, mut message) = match rate {
        _ if total < min_requests => (
            Verdict::Inconclusive,
            format!("only {total} answers {from}, fewer than min_requests = {min_requests}"),
        ),
        Some(rate) if rate > max_error_rate => (
            Verdict::Fail,
            format!(
                "5xx {} ({errors} of {total} answers {from}) > max_error_rate {}",
                percent(rate),
                percent(max_error_rate)
            ),
        ),
        _ => (
            Verdict::Pass,
            format!(
                "5xx {} ({errors} of {total} answers {from}) ≤ max_error_rate {}",
                percent(rate.unwrap_or(0.0)),
                percent(max_error_rate)
            ),
        ),
    };
    if !sampled.missing.is_empty() {
        message.push_str(&format!(
            "; HAProxy does not list {}",
            sampled.missing.join(", ")
        ));
    }
    if !sampled.resets.is_empty() {
        message.push_str(&format!(
            "; counters started again on {} (HAProxy reloaded): counted from 0",
            sampled.resets.join(", ")
        ));
    }
    let measured = Measured::Haproxy {
        answers: total,
        errors,
        error_rate: rate,
        window: counts.span,
        missing: sampled.missing,
        resets: sampled.resets,
    };
    (verdict, measured, message)
}

/// A window's length as people read it: `0.9s`, `6s`, `5m 2s`.
fn span(d: Duration) -> String {
    let tenths = (d.as_millis() + 50) / 100;
    match tenths {
        t if t >= 600 => humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
        t if t % 10 == 0 => format!("{}s", t / 10),
        t => format!("{}.{}s", t / 10, t % 10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_well() {
        assert_eq!(span(Duration::from_millis(999)), "1s");
        assert_eq!(span(Duration::from_millis(1460)), "1.5s");
        assert_eq!(span(Duration::from_millis(302_400)), "5m 2s");
    }

    fn counted(balancer: &str, host: &str, total: u64, errors: u64) -> Counted {
        Counted {
            balancer: balancer.into(),
            host: host.into(),
            answers: Some(Answers { total, errors }),
        }
    }

    fn gone(balancer: &str, host: &str) -> Counted {
        Counted {
            balancer: balancer.into(),
            host: host.into(),
            answers: None,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_are_differences_from_the_first_sample() {
        let mut t = Tally::default();
        // Counters since HAProxy started: only what happens during the bake counts.
        t.add(secs(0), &[counted("lb", "web1", 10_000, 300)]);
        t.add(secs(1), &[counted("lb", "web1", 10_040, 302)]);
        t.add(secs(2), &[counted("lb", "web1", 10_100, 310)]);
        let c = t.counts(&hosts(&["web1"]), None);
        assert_eq!(
            c.answers,
            Answers {
                total: 100,
                errors: 10
            }
        );
        assert_eq!(c.span, secs(2));
        let (verdict, measured, message) =
            judge(c, Sampled::default(), &hosts(&["web1"]), 0.05, 50);
        assert_eq!(verdict, Verdict::Fail);
        assert_eq!(
            message,
            "5xx 10% (10 of 100 answers from web1 in 2s) > max_error_rate 5%"
        );
        match measured {
            Measured::Haproxy { error_rate, .. } => assert_eq!(error_rate, Some(0.1)),
            other => panic!("{other:?}"),
        }
        // Exactly at the limit passes.
        let (verdict, _, _) = judge(c, Sampled::default(), &hosts(&["web1"]), 0.1, 50);
        assert_eq!(verdict, Verdict::Pass);
    }

    #[test]
    fn a_reload_starts_the_counters_again_and_nothing_is_lost() {
        let mut t = Tally::default();
        t.add(secs(0), &[counted("lb", "web1", 5_000, 0)]);
        t.add(secs(1), &[counted("lb", "web1", 5_030, 1)]);
        // HAProxy reloaded: the new process has counted 20 answers, 2 errors.
        let sampled = t.add(secs(2), &[counted("lb", "web1", 20, 2)]);
        assert_eq!(sampled.resets, ["lb"]);
        t.add(secs(3), &[counted("lb", "web1", 50, 2)]);
        let c = t.counts(&hosts(&["web1"]), None);
        assert_eq!(
            c.answers,
            Answers {
                total: 30 + 20 + 30,
                errors: 3
            }
        );
        let (_, measured, message) = judge(c, sampled, &hosts(&["web1"]), 0.05, 10);
        assert!(
            message.ends_with("; counters started again on lb (HAProxy reloaded): counted from 0")
        );
        match measured {
            Measured::Haproxy { resets, .. } => assert_eq!(resets, ["lb"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_server_missing_from_an_answer_adds_nothing_and_is_named() {
        let mut t = Tally::default();
        t.add(
            secs(0),
            &[counted("lb", "web1", 100, 0), counted("lb", "web2", 100, 0)],
        );
        let sampled = t.add(
            secs(1),
            &[counted("lb", "web1", 160, 0), gone("lb", "web2")],
        );
        assert_eq!(sampled.missing, ["web2"]);
        let both = hosts(&["web1", "web2"]);
        assert_eq!(t.counts(&both, None).answers.total, 60);
        let (_, _, message) = judge(t.counts(&both, None), sampled, &both, 0.01, 50);
        assert_eq!(
            message,
            "5xx 0% (0 of 60 answers from web1, web2 in 1s) ≤ max_error_rate 1%; HAProxy does not list web2"
        );
        // Listed again: the difference covers the gap.
        t.add(
            secs(2),
            &[counted("lb", "web1", 160, 0), counted("lb", "web2", 190, 9)],
        );
        assert_eq!(
            t.counts(&both, None).answers,
            Answers {
                total: 150,
                errors: 9
            }
        );
        // A server never listed at all has no answers.
        let mut t = Tally::default();
        t.add(secs(0), &[gone("lb", "web3")]);
        t.add(secs(1), &[gone("lb", "web3")]);
        assert_eq!(t.counts(&hosts(&["web3"]), None).answers.total, 0);
    }

    #[test]
    fn too_few_answers_are_inconclusive() {
        let mut t = Tally::default();
        t.add(secs(0), &[counted("lb", "web1", 0, 0)]);
        t.add(secs(5), &[counted("lb", "web1", 12, 12)]);
        let c = t.counts(&hosts(&["web1"]), None);
        let (verdict, measured, message) =
            judge(c, Sampled::default(), &hosts(&["web1"]), 0.05, 50);
        assert_eq!(verdict, Verdict::Inconclusive);
        assert_eq!(
            message,
            "only 12 answers from web1 in 5s, fewer than min_requests = 50"
        );
        assert!(matches!(measured, Measured::Haproxy { answers: 12, .. }));
        // No traffic at all: no rate, still inconclusive.
        let (verdict, measured, _) = judge(
            Counts::default(),
            Sampled::default(),
            &hosts(&["web1"]),
            0.05,
            1,
        );
        assert_eq!(verdict, Verdict::Inconclusive);
        assert!(matches!(
            measured,
            Measured::Haproxy {
                error_rate: None,
                ..
            }
        ));
    }

    #[test]
    fn load_balancers_of_a_pair_count_apart_and_add_up() {
        let mut t = Tally::default();
        t.add(
            secs(0),
            &[
                counted("lb1", "web1", 1000, 0),
                counted("lb2", "web1", 7, 0),
            ],
        );
        // lb2 was reloaded, lb1 was not.
        let sampled = t.add(
            secs(1),
            &[
                counted("lb1", "web1", 1030, 3),
                counted("lb2", "web1", 5, 1),
            ],
        );
        assert_eq!(sampled.resets, ["lb2"]);
        assert_eq!(
            t.counts(&hosts(&["web1"]), None).answers,
            Answers {
                total: 35,
                errors: 4
            }
        );
    }

    #[test]
    fn a_window_counts_only_its_last_stretch() {
        let mut t = Tally::default();
        t.add(secs(0), &[counted("lb", "web1", 0, 0)]);
        t.add(secs(10), &[counted("lb", "web1", 100, 50)]);
        t.add(secs(20), &[counted("lb", "web1", 200, 50)]);
        t.add(secs(30), &[counted("lb", "web1", 300, 50)]);
        let one = hosts(&["web1"]);
        assert_eq!(
            t.counts(&one, Some(secs(20))),
            Counts {
                answers: Answers {
                    total: 200,
                    errors: 0
                },
                span: secs(20)
            }
        );
        // A window longer than the bake so far is the whole bake.
        assert_eq!(t.counts(&one, Some(secs(60))).answers.errors, 50);
        assert_eq!(t.counts(&one, None).span, secs(30));
    }
}
