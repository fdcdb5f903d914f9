//! The prometheus gate: one instant query through Prometheus's HTTP API
//! (`GET /api/v1/query`), every value it returns within `min`..=`max`.
//! `ask` does the request; `values` and `judge` are the arithmetic.
//!
//! No series, or only NaN (a ratio over no traffic), is no data:
//! inconclusive. Several series are judged each; the worst decides.

use std::time::Duration;

use crate::report::{Measured, Verdict};

/// Runs `query` against the Prometheus at `url`; the values returned.
pub async fn ask(
    client: &reqwest::Client,
    url: &str,
    query: &str,
    timeout: Duration,
) -> Result<Vec<f64>, String> {
    let endpoint =
        reqwest::Url::parse_with_params(&format!("{url}/api/v1/query"), &[("query", query)])
            .map_err(|e| format!("prometheus {url}: {e}"))?;
    let response = client
        .get(endpoint)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            format!(
                "prometheus {url}: {}",
                super::super::health::error_chain(&e)
            )
        })?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("prometheus {url}: status {status}, body unreadable: {e}"))?;
    values(&body).map_err(|e| format!("prometheus {url}: status {}: {e}", status.as_u16()))
}

/// The values of an answer to `/api/v1/query`: a vector's samples or a
/// scalar. An error answer is Prometheus's own words.
pub fn values(body: &str) -> Result<Vec<f64>, String> {
    let answer: serde_json::Value = serde_json::from_str(body).map_err(|_| {
        format!(
            "not an answer of Prometheus's query API: {:?}",
            body.chars().take(200).collect::<String>()
        )
    })?;
    if answer["status"] != "success" {
        return Err(format!(
            "{}: {}",
            answer["errorType"].as_str().unwrap_or("error"),
            answer["error"].as_str().unwrap_or("no reason given")
        ));
    }
    let data = &answer["data"];
    let sample = |value: &serde_json::Value| -> Result<f64, String> {
        value[1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| format!("unexpected sample {value}"))
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .map(|series| series.iter().map(|s| sample(&s["value"])).collect())
            .unwrap_or_else(|| Err("a vector without a result list".into())),
        Some("scalar") => Ok(vec![sample(&data["result"])?]),
        other => Err(format!(
            "the query returns a {}; use one that returns an instant vector or a scalar (a range vector needs sum(rate(...)) or the like)",
            other.unwrap_or("nothing")
        )),
    }
}

/// The verdict on the values, with what was measured and the words for it.
pub fn judge(values: &[f64], min: Option<f64>, max: Option<f64>) -> (Verdict, Measured, String) {
    let data: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    let series = values.len();
    // How far beyond its limits a value lies (negative: within them, by that much).
    let beyond = |v: f64| -> f64 {
        let over = max.map_or(f64::NEG_INFINITY, |hi| v - hi);
        let under = min.map_or(f64::NEG_INFINITY, |lo| lo - v);
        over.max(under)
    };
    let worst = data
        .iter()
        .copied()
        .max_by(|a, b| beyond(*a).total_cmp(&beyond(*b)));
    let limit = match (min, max) {
        (Some(lo), Some(hi)) => format!("{lo} ≤ value ≤ {hi}"),
        (Some(lo), None) => format!("value ≥ {lo}"),
        (None, Some(hi)) => format!("value ≤ {hi}"),
        (None, None) => "any value".into(),
    };
    let (verdict, message) = match worst {
        None if series == 0 => (
            Verdict::Inconclusive,
            "the query returned no data".to_string(),
        ),
        None => (
            Verdict::Inconclusive,
            format!("the query returned only NaN ({series} series): no data to judge"),
        ),
        Some(v) if beyond(v) > 0.0 => (Verdict::Fail, format!("{v} is outside {limit}")),
        Some(v) => (Verdict::Pass, format!("{v} is within {limit}")),
    };
    let message = if series > 1 {
        format!("{message} (worst of {series} series)")
    } else {
        message
    };
    (
        verdict,
        Measured::Prometheus {
            value: worst,
            series,
        },
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_the_query_api() {
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"server":"web1"},"value":[1700000000.1,"0.25"]},
            {"metric":{"server":"web2"},"value":[1700000000.1,"NaN"]}]}}"#;
        let v = values(vector).unwrap();
        assert_eq!(v[0], 0.25);
        assert!(v[1].is_nan());
        let scalar =
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"3"]}}"#;
        assert_eq!(values(scalar).unwrap(), [3.0]);
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(values(empty).unwrap().is_empty());
        let error = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        assert_eq!(
            values(error).unwrap_err(),
            "bad_data: parse error at char 5"
        );
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(
            values(matrix)
                .unwrap_err()
                .starts_with("the query returns a matrix")
        );
        assert!(values("<html>").unwrap_err().starts_with("not an answer"));
    }

    #[test]
    fn every_value_within_the_limits() {
        let (v, measured, message) = judge(&[0.1, 0.7], None, Some(0.5));
        assert_eq!(v, Verdict::Fail);
        assert_eq!(message, "0.7 is outside value ≤ 0.5 (worst of 2 series)");
        assert_eq!(
            measured,
            Measured::Prometheus {
                value: Some(0.7),
                series: 2
            }
        );
        let (v, _, message) = judge(&[0.2], Some(0.1), Some(0.5));
        assert_eq!(
            (v, message.as_str()),
            (Verdict::Pass, "0.2 is within 0.1 ≤ value ≤ 0.5")
        );
        let (v, _, message) = judge(&[0.05], Some(0.1), Some(0.5));
        assert_eq!(
            (v, message.as_str()),
            (Verdict::Fail, "0.05 is outside 0.1 ≤ value ≤ 0.5")
        );
        // The limit itself passes.
        assert_eq!(judge(&[0.5], None, Some(0.5)).0, Verdict::Pass);
    }

    #[test]
    fn no_data_is_inconclusive() {
        let (v, measured, message) = judge(&[], None, Some(1.0));
        assert_eq!(v, Verdict::Inconclusive);
        assert_eq!(message, "the query returned no data");
        assert_eq!(
            measured,
            Measured::Prometheus {
                value: None,
                series: 0
            }
        );
        let (v, _, message) = judge(&[f64::NAN], None, Some(1.0));
        assert_eq!(v, Verdict::Inconclusive);
        assert_eq!(
            message,
            "the query returned only NaN (1 series): no data to judge"
        );
        // NaN beside real data is left out.
        assert_eq!(judge(&[f64::NAN, 2.0], None, Some(1.0)).0, Verdict::Fail);
    }
}
