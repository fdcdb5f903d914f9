//! What shipit keeps on each host, and the pure rules over it: the
//! directory layout and its commands (`layout`), what a read-only probe
//! reports (`facts`), which releases rollback and cleanup pick (`releases`),
//! what `shipit STAGE check` reads and how it judges it (`check`), health
//! checks run on the host (`health`), the revisions log format (`revlog`),
//! and how a running rollout is steered through the hosts (`steer`).

pub mod check;
pub mod facts;
pub mod health;
pub mod journal;
pub mod layout;
pub mod lock;
pub mod releases;
pub mod revlog;
pub mod steer;

use std::fmt;
use std::str::FromStr;

pub use facts::{Current, HostFacts, ReleaseInfo};
pub use layout::Layout;

/// A release name: the UTC time it was made, `YYYYmmddHHMMSS`. Names sort
/// in time order, so "newest" and "older than" are string comparisons.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ReleaseId(String);

impl ReleaseId {
    /// The id for a release made at `now`: its UTC time, moved one second
    /// past the newest existing release if needed so that a new release
    /// always sorts last, whatever the clocks say.
    pub fn next(now: jiff::Timestamp, existing: impl IntoIterator<Item = ReleaseId>) -> ReleaseId {
        let mut id = ReleaseId::at(now);
        if let Some(newest) = existing.into_iter().max()
            && newest >= id
        {
            let after = newest.timestamp() + jiff::SignedDuration::from_secs(1);
            id = ReleaseId::at(after);
        }
        id
    }

    pub fn at(time: jiff::Timestamp) -> ReleaseId {
        ReleaseId(time.strftime("%Y%m%d%H%M%S").to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn timestamp(&self) -> jiff::Timestamp {
        jiff::civil::DateTime::strptime("%Y%m%d%H%M%S", &self.0)
            .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC))
            .map(|z| z.timestamp())
            .expect("a ReleaseId is always a valid time")
    }
}

impl FromStr for ReleaseId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s.len() == 14
            && s.bytes().all(|b| b.is_ascii_digit())
            && jiff::civil::DateTime::strptime("%Y%m%d%H%M%S", s).is_ok();
        if valid {
            Ok(ReleaseId(s.to_string()))
        } else {
            Err(format!("{s:?} is not a release id (YYYYmmddHHMMSS, UTC)"))
        }
    }
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn ids_are_utc_times() {
        assert_eq!(
            ReleaseId::at(ts("2026-11-22T10:15:00Z")).as_str(),
            "20261122101500"
        );
        assert!("2026112210150".parse::<ReleaseId>().is_err());
        assert!("20261399101500".parse::<ReleaseId>().is_err());
        assert!("2026112210150x".parse::<ReleaseId>().is_err());
    }

    #[test]
    fn next_id_always_sorts_after_existing_ones() {
        let now = ts("2026-11-22T10:15:00Z");
        let existing = |ids: &[&str]| {
            ids.iter()
                .map(|i| i.parse().unwrap())
                .collect::<Vec<ReleaseId>>()
        };
        assert_eq!(
            ReleaseId::next(now, existing(&["20261121000000"])).as_str(),
            "20261122101500"
        );
        // Same second: made unique by moving one second on.
        assert_eq!(
            ReleaseId::next(now, existing(&["20261122101500"])).as_str(),
            "20261122101501"
        );
        // A host whose releases come from a clock running ahead.
        assert_eq!(
            ReleaseId::next(now, existing(&["20261122235959"])).as_str(),
            "20261123000000"
        );
    }
}
