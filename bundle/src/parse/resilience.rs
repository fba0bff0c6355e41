//! Decoding of the resilience settings: overload protection on listeners; health checks, circuit
//! breakers and outlier detection on pools; retries, hedging and rate limits on routes.
//!
//! Checks that relate two fields compare *effective* values (a default counts as if written), and
//! report at the field that depends on the other (`timeout` against `interval`, `max` against
//! `base`), naming both values.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use serde_json::Value;

use super::{is_dns_name, methods, positive};
use crate::Duration;
use crate::decode::{Decode, Decoder, Fields, describe};
use crate::resilience::*;

/// Any count of one or more.
pub(super) const ONE_OR_MORE: RangeInclusive<u32> = 1..=u32::MAX;
/// A percentage.
const PERCENT: RangeInclusive<u32> = 0..=100;

// === Overload ===

impl Decode for Overload {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["max_concurrent_requests", "max_queued", "queue_timeout"], d)?;
        let max = count(&f, "max_concurrent_requests", ONE_OR_MORE, d);
        let max = required(&f, "max_concurrent_requests", max, d);
        let max_queued = f.opt::<u32>("max_queued", d);
        let queue_timeout = positive(&f, "queue_timeout", d);
        Some(Overload {
            max_concurrent_requests: max?,
            max_queued: max_queued.ok()?,
            queue_timeout: queue_timeout.ok()?,
        })
    }
}

// === RequestBodyRules ===

impl Decode for RequestBodyRules {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["buffer", "read_timeout", "min_rate"], d)?;
        let buffer = f.opt::<ByteSize>("buffer", d).and_then(|b| match b {
            Some(ByteSize(n)) if n > MAX_BODY_BUFFER => {
                d.error(&f.path("buffer"), format!("{n} bytes is more than the largest buffer, 16MiB"));
                Err(())
            }
            b => Ok(b),
        });
        let read_timeout = positive(&f, "read_timeout", d);
        let min_rate = f.opt::<ByteSize>("min_rate", d);
        Some(RequestBodyRules {
            buffer: buffer.ok()?,
            read_timeout: read_timeout.ok()?,
            min_rate: min_rate.ok()?,
        })
    }
}

// === HealthCheck ===

impl Decode for HealthCheck {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &[
                "path",
                "host",
                "interval",
                "timeout",
                "jitter",
                "healthy_threshold",
                "unhealthy_threshold",
                "expected_status",
            ],
            d,
        )?;
        let before = d.error_count();
        let check_path = f.req::<String>("path", d);
        if let Some(p) = &check_path {
            if !p.starts_with('/') {
                d.error(&f.path("path"), format!("{p:?} must start with /"));
            } else if p.contains('#') {
                d.error(&f.path("path"), format!("{p:?}: a fragment is never sent; leave out the #"));
            } else if !p.bytes().all(|b| b.is_ascii_graphic()) {
                d.error(
                    &f.path("path"),
                    format!("{p:?}: use printable ASCII without spaces; percent-encode the rest"),
                );
            }
        }
        let host = f.opt::<String>("host", d);
        if let Ok(Some(h)) = &host
            && let Err(e) = check_host_header(h)
        {
            d.error(&f.path("host"), e);
        }
        let interval = positive(&f, "interval", d);
        let timeout = positive(&f, "timeout", d);
        let jitter = f.opt::<Duration>("jitter", d);
        let healthy = count(&f, "healthy_threshold", ONE_OR_MORE, d);
        let unhealthy = count(&f, "unhealthy_threshold", ONE_OR_MORE, d);
        let expected_status = f.opt::<StatusRange>("expected_status", d);

        if let (Ok(interval), Ok(timeout)) = (interval, timeout) {
            let (i, i_default) = effective(interval, DEFAULT_HEALTH_INTERVAL);
            let (t, t_default) = effective(timeout, DEFAULT_HEALTH_TIMEOUT);
            if t > i {
                d.error(
                    &f.path("timeout"),
                    format!("timeout {t}{t_default} is longer than interval {i}{i_default}"),
                );
            }
            if let Ok(Some(j)) = jitter
                && j >= i
            {
                d.error(
                    &f.path("jitter"),
                    format!("jitter {j} must be shorter than interval {i}{i_default}"),
                );
            }
        }
        if d.error_count() > before {
            return None;
        }
        Some(HealthCheck {
            path: check_path?,
            host: host.ok()?,
            interval: interval.ok()?,
            timeout: timeout.ok()?,
            jitter: jitter.ok()?,
            healthy_threshold: healthy.ok()?,
            unhealthy_threshold: unhealthy.ok()?,
            expected_status: expected_status.ok()?,
        })
    }
}

/// A `Host` header value: a DNS name or an IP address (IPv6 in brackets), optionally with a port.
fn check_host_header(h: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid host {h:?}: {why}"));
    if h.contains("://") || h.contains('/') {
        return bad("write the host alone, without a scheme or path, like health.internal or 10.0.0.1:8080");
    }
    if h.parse::<Ipv6Addr>().is_ok() {
        return bad("IPv6 addresses go in brackets, like [::1]");
    }
    let host = match h.rsplit_once(':') {
        Some((host, port)) if !h.ends_with(']') => match port.parse::<u16>() {
            Ok(p) if p > 0 => host,
            _ => return bad("the port must be a number from 1 to 65535"),
        },
        _ => h,
    };
    let ok = match host.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(ip) => ip.parse::<Ipv6Addr>().is_ok(),
        None => host.parse::<Ipv4Addr>().is_ok() || is_dns_name(host),
    };
    if ok {
        Ok(())
    } else {
        bad(
            "expected a DNS name or an IP address, optionally with a port, like health.internal or 10.0.0.1:8080",
        )
    }
}

// === impl StatusRange ===

/// `"200-399"`, `"204"` or `204`.
impl Decode for StatusRange {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.is_u64() => n.to_string(),
            other => {
                d.error(
                    path,
                    format!(
                        "expected a status like 200 or a range like \"200-399\", found {}",
                        describe(other)
                    ),
                );
                return None;
            }
        };
        StatusRange::parse(&text).map_err(|e| d.error(path, e)).ok()
    }
}

// === CircuitBreaker ===

impl Decode for CircuitBreaker {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        const RATE_ONLY: [&str; 4] = ["min_requests", "window", "open_duration", "half_open_requests"];
        let f = Fields::new(
            v,
            path,
            &[
                "max_connections",
                "max_pending_requests",
                "max_requests",
                "max_retries",
                "error_threshold_percent",
                "min_requests",
                "window",
                "open_duration",
                "half_open_requests",
            ],
            d,
        )?;
        let before = d.error_count();
        let max_connections = count(&f, "max_connections", ONE_OR_MORE, d);
        let max_pending = count(&f, "max_pending_requests", ONE_OR_MORE, d);
        let max_requests = count(&f, "max_requests", ONE_OR_MORE, d);
        let max_retries = f.opt::<u32>("max_retries", d);
        let threshold = count(&f, "error_threshold_percent", 1..=100, d);
        let min_requests = count(&f, "min_requests", ONE_OR_MORE, d);
        let window = positive(&f, "window", d);
        let open_duration = positive(&f, "open_duration", d);
        let half_open = count(&f, "half_open_requests", ONE_OR_MORE, d);
        if f.raw("error_threshold_percent").is_none() {
            for key in RATE_ONLY.into_iter().filter(|k| f.raw(k).is_some()) {
                d.error(
                    &f.path(key),
                    "only applies to the error-rate breaker; set error_threshold_percent to turn it on",
                );
            }
        }
        if d.error_count() > before {
            return None;
        }
        Some(CircuitBreaker {
            max_connections: max_connections.ok()?,
            max_pending_requests: max_pending.ok()?,
            max_requests: max_requests.ok()?,
            max_retries: max_retries.ok()?,
            error_threshold_percent: threshold.ok()?,
            min_requests: min_requests.ok()?,
            window: window.ok()?,
            open_duration: open_duration.ok()?,
            half_open_requests: half_open.ok()?,
        })
    }
}

// === OutlierDetection ===

impl Decode for OutlierDetection {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &[
                "enabled",
                "consecutive_5xx",
                "interval",
                "base_ejection_time",
                "max_ejection_time",
                "max_ejection_percent",
                "success_rate",
                "latency",
            ],
            d,
        )?;
        let before = d.error_count();
        let enabled = f.opt::<bool>("enabled", d);
        let consecutive_5xx = count(&f, "consecutive_5xx", ONE_OR_MORE, d);
        let interval = positive(&f, "interval", d);
        let base = positive(&f, "base_ejection_time", d);
        let max = positive(&f, "max_ejection_time", d);
        let max_percent = count(&f, "max_ejection_percent", PERCENT, d);
        let success_rate = f.opt::<SuccessRateOutlier>("success_rate", d);
        let latency = f.opt::<LatencyOutlier>("latency", d);
        if let (Ok(base), Ok(max)) = (base, max) {
            let (b, b_default) = effective(base, DEFAULT_BASE_EJECTION_TIME);
            let (m, m_default) = effective(max, DEFAULT_MAX_EJECTION_TIME);
            if m < b {
                d.error(
                    &f.path("max_ejection_time"),
                    format!(
                        "max_ejection_time {m}{m_default} is shorter than base_ejection_time {b}{b_default}"
                    ),
                );
            }
        }
        if d.error_count() > before {
            return None;
        }
        Some(OutlierDetection {
            enabled: enabled.ok()?,
            consecutive_5xx: consecutive_5xx.ok()?,
            interval: interval.ok()?,
            base_ejection_time: base.ok()?,
            max_ejection_time: max.ok()?,
            max_ejection_percent: max_percent.ok()?,
            success_rate: success_rate.ok()?,
            latency: latency.ok()?,
        })
    }
}

impl Decode for SuccessRateOutlier {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["enabled", "min_hosts", "min_requests", "stdev_factor"], d)?;
        let enabled = f.opt::<bool>("enabled", d);
        let min_hosts = count(&f, "min_hosts", 2..=u32::MAX, d);
        let min_requests = count(&f, "min_requests", ONE_OR_MORE, d);
        let stdev_factor = number(&f, "stdev_factor", 0.0, 10.0, d);
        Some(SuccessRateOutlier {
            enabled: enabled.ok()?,
            min_hosts: min_hosts.ok()?,
            min_requests: min_requests.ok()?,
            stdev_factor: stdev_factor.ok()?,
        })
    }
}

impl Decode for LatencyOutlier {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["factor", "min_requests"], d)?;
        let factor = number(&f, "factor", 1.0, 100.0, d);
        let factor = required(&f, "factor", factor, d);
        let min_requests = count(&f, "min_requests", ONE_OR_MORE, d);
        Some(LatencyOutlier { factor: factor?, min_requests: min_requests.ok()? })
    }
}

// === Retries ===

impl Decode for Retries {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        const EMPTY: &str = "an empty list retries nothing; use max_attempts: 1 to turn retries off";
        let f = Fields::new(
            v,
            path,
            &[
                "max_attempts",
                "retry_on",
                "methods",
                "per_try_timeout",
                "backoff",
                "budget_percent",
                "min_retries_per_second",
            ],
            d,
        )?;
        let before = d.error_count();
        let max_attempts = count(&f, "max_attempts", 1..=10, d);
        let retry_on = match f.raw("retry_on") {
            None => None,
            Some(Value::Array(a)) if a.is_empty() => {
                d.error(&f.path("retry_on"), EMPTY);
                None
            }
            Some(_) => {
                let items = f.list::<RetryOn>("retry_on", d);
                for (i, r) in items.iter().enumerate() {
                    let Some(r) = r else { continue };
                    let p = format!("{}[{i}]", f.path("retry_on"));
                    if items[..i].contains(&Some(*r)) {
                        d.error(&p, format!("{r} is listed twice"));
                    } else if *r == RetryOn::Timeout && f.raw("per_try_timeout").is_none() {
                        d.error(&p, "retrying on timeout needs per_try_timeout, the time after which a try counts as timed out");
                    }
                }
                Some(items)
            }
        };
        let methods = match f.raw("methods") {
            None => None,
            Some(Value::Array(a)) if a.is_empty() => {
                d.error(&f.path("methods"), EMPTY);
                None
            }
            Some(_) => Some(methods(&f, "methods", d)),
        };
        let per_try_timeout = positive(&f, "per_try_timeout", d);
        let backoff = f.opt::<Backoff>("backoff", d);
        let budget_percent = count(&f, "budget_percent", PERCENT, d);
        let min_per_second = f.opt::<u32>("min_retries_per_second", d);
        if d.error_count() > before {
            return None;
        }
        Some(Retries {
            max_attempts: max_attempts.ok()?,
            retry_on: match retry_on {
                Some(items) => Some(items.into_iter().collect::<Option<_>>()?),
                None => None,
            },
            methods: match methods {
                Some(items) => Some(items.into_iter().collect::<Option<_>>()?),
                None => None,
            },
            per_try_timeout: per_try_timeout.ok()?,
            backoff: backoff.ok()?,
            budget_percent: budget_percent.ok()?,
            min_retries_per_second: min_per_second.ok()?,
        })
    }
}

/// `connect_failure`, `reset`, `timeout`, or a status from 500 to 599 (`503` or `"503"`).
impl Decode for RetryOn {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let hint = || format!("expected {} or a status from 500 to 599", RetryOn::NAMES.join(", "));
        let status = match v {
            Value::String(s) => match s.as_str() {
                "connect_failure" => return Some(Self::ConnectFailure),
                "reset" => return Some(Self::Reset),
                "timeout" => return Some(Self::Timeout),
                _ => match s.parse::<u64>() {
                    Ok(n) => n,
                    Err(_) => {
                        d.error(path, format!("unknown value {s:?}; {}", hint()));
                        return None;
                    }
                },
            },
            other => match other.as_u64() {
                Some(n) => n,
                None => {
                    d.error(path, format!("{}, found {}", hint(), describe(other)));
                    return None;
                }
            },
        };
        match u16::try_from(status) {
            Ok(s) if (500..=599).contains(&s) => Some(Self::Status(s)),
            _ => {
                d.error(path, format!("{status} is not a 5xx status; {}", hint()));
                None
            }
        }
    }
}

impl Decode for Backoff {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["base", "max"], d)?;
        let base = positive(&f, "base", d);
        let max = positive(&f, "max", d);
        let (Ok(base), Ok(max)) = (base, max) else { return None };
        let (b, b_default) = effective(base, DEFAULT_BACKOFF_BASE);
        let (m, m_default) = effective(max, DEFAULT_BACKOFF_MAX);
        if m < b {
            d.error(&f.path("max"), format!("max {m}{m_default} is shorter than base {b}{b_default}"));
            return None;
        }
        Some(Backoff { base, max })
    }
}

// === Hedge, RateLimit, ByteSize ===

impl Decode for Hedge {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["delay", "budget_percent"], d)?;
        let delay = positive(&f, "delay", d);
        let budget_percent = count(&f, "budget_percent", 1..=100, d);
        Some(Hedge { delay: delay.ok()?, budget_percent: budget_percent.ok()? })
    }
}

impl Decode for RateLimit {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["requests_per_second", "burst", "key"], d)?;
        let rps = count(&f, "requests_per_second", ONE_OR_MORE, d);
        let rps = required(&f, "requests_per_second", rps, d);
        let burst = count(&f, "burst", ONE_OR_MORE, d);
        let key = f.opt::<crate::HashOn>("key", d);
        Some(RateLimit { requests_per_second: rps?, burst: burst.ok()?, key: key.ok()? })
    }
}

/// `"64KiB"`, `"10MiB"`, `"512"` or `512`.
impl Decode for ByteSize {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        if let Some(n) = v.as_u64() {
            return Some(ByteSize(n));
        }
        match v {
            Value::String(s) => ByteSize::parse(s).map_err(|e| d.error(path, e)).ok(),
            other => {
                d.error(
                    path,
                    format!("expected a size like 65536, 64KiB or 10MiB, found {}", describe(other)),
                );
                None
            }
        }
    }
}

// === field readers ===

/// An optional whole number within `range`.
pub(super) fn count(
    f: &Fields<'_>,
    key: &str,
    range: RangeInclusive<u32>,
    d: &mut Decoder,
) -> Result<Option<u32>, ()> {
    match f.opt::<u32>(key, d)? {
        Some(n) if !range.contains(&n) => {
            let msg = if *range.end() == u32::MAX {
                format!("must be at least {}, found {n}", range.start())
            } else {
                format!("{n} is out of range {} to {}", range.start(), range.end())
            };
            d.error(&f.path(key), msg);
            Err(())
        }
        n => Ok(n),
    }
}

/// An optional number above `above` and at most `at_most`.
fn number(f: &Fields<'_>, key: &str, above: f64, at_most: f64, d: &mut Decoder) -> Result<Option<f64>, ()> {
    match f.opt::<f64>(key, d)? {
        Some(n) if !(n > above && n <= at_most) => {
            d.error(
                &f.path(key),
                format!("{n} is out of range: must be above {above} and at most {at_most}"),
            );
            Err(())
        }
        n => Ok(n),
    }
}

/// The value of a required field read with one of the optional readers above.
fn required<T>(f: &Fields<'_>, key: &str, value: Result<Option<T>, ()>, d: &mut Decoder) -> Option<T> {
    match value {
        Ok(Some(v)) => Some(v),
        Ok(None) => {
            d.error(&f.path(key), "missing required field");
            None
        }
        Err(()) => None,
    }
}

/// The value in effect, and a note for messages when it is the default.
fn effective(written: Option<Duration>, default: Duration) -> (Duration, &'static str) {
    match written {
        Some(t) => (t, ""),
        None => (default, " (the default)"),
    }
}
