//! How the benches print a figure: milliseconds, quantiles, verdicts.
#![allow(dead_code)]

use std::time::Duration;

/// The `q` quantile of `sorted` (zero when it is empty).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}
