//! Decoding of a route's traffic settings: canary, cohorts and mirror (with its diff and
//! guardrail). Pool references are checked by the config, against every pool written down.

use serde_json::Value;

use super::resilience::{ONE_OR_MORE, count};
use super::{check_cookie_name, check_header_name, check_regex_unanchored, methods, positive};
use crate::decode::{Decode, Decoder, Fields, describe};
use crate::traffic::*;
use crate::{ByteSize, HashOn};

// === Canary ===

impl Decode for Canary {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["pool", "weight", "sticky", "brake"], d)?;
        let pool = f.req::<String>("pool", d);
        let weight = f.req::<f64>("weight", d).and_then(|w| {
            if (0.0..=100.0).contains(&w) {
                Some(w)
            } else {
                d.error(&f.path("weight"), format!("{w} is out of range: a percentage from 0 to 100"));
                None
            }
        });
        let sticky = f.opt::<HashOn>("sticky", d);
        let brake = f.opt::<CanaryBrake>("brake", d);
        Some(Canary { pool: pool?, weight: weight?, sticky: sticky.ok()?, brake: brake.ok()? })
    }
}

impl Decode for CanaryBrake {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["enabled", "max_error_percent", "min_requests", "window"], d)?;
        let enabled = f.opt::<bool>("enabled", d);
        let max_error = fraction_of(&f, "max_error_percent", 100.0, d);
        let min_requests = count(&f, "min_requests", ONE_OR_MORE, d);
        let window = positive(&f, "window", d);
        Some(CanaryBrake {
            enabled: enabled.ok()?,
            max_error_percent: max_error.ok()?,
            min_requests: min_requests.ok()?,
            window: window.ok()?,
        })
    }
}

// === Cohorts ===

impl Decode for Cohorts {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["header", "cookie", "values"], d)?;
        let header = f.opt::<String>("header", d);
        let cookie = f.opt::<String>("cookie", d);
        match (&header, &cookie) {
            (Ok(Some(h)), Ok(None)) => check_header_name(h, &f.path("header"), d).unwrap_or(()),
            (Ok(None), Ok(Some(c))) => check_cookie_name(c, &f.path("cookie"), d).unwrap_or(()),
            (Ok(Some(_)), Ok(Some(_))) => d.error(path, "header and cookie are exclusive; use one"),
            (Ok(None), Ok(None)) => d.error(path, "needs the header or the cookie that carries the cohort"),
            _ => {}
        }
        let values = match f.raw("values") {
            None => {
                d.error(&f.path("values"), "missing required field: cohort values and their pools");
                None
            }
            Some(Value::Object(m)) if m.is_empty() => {
                d.error(&f.path("values"), "needs at least one cohort value");
                None
            }
            Some(Value::Object(m)) if m.len() > MAX_COHORTS => {
                d.error(&f.path("values"), format!("{} cohorts; at most {MAX_COHORTS}", m.len()));
                None
            }
            Some(Value::Object(m)) => {
                let mut out = std::collections::BTreeMap::new();
                for (k, pool) in m {
                    if let Some(p) = String::decode(pool, &format!("{}.{k}", f.path("values")), d) {
                        out.insert(k.clone(), p);
                    }
                }
                (out.len() == m.len()).then_some(out)
            }
            Some(other) => {
                d.error(
                    &f.path("values"),
                    format!("expected a map of cohort value to pool, found {}", describe(other)),
                );
                None
            }
        };
        Some(Cohorts { header: header.ok()?, cookie: cookie.ok()?, values: values? })
    }
}

// === Mirror ===

impl Decode for Mirror {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &["pool", "fraction", "methods", "max_body", "max_in_flight", "timeout", "diff", "guardrail"],
            d,
        )?;
        let before = d.error_count();
        let pool = f.req::<String>("pool", d);
        let fraction = fraction_of(&f, "fraction", 1.0, d).and_then(|x| above_zero(&f, "fraction", x, d));
        let methods = match f.raw("methods") {
            None => None,
            Some(Value::Array(a)) if a.is_empty() => {
                d.error(&f.path("methods"), "an empty list mirrors nothing; remove the mirror instead");
                None
            }
            Some(_) => Some(methods(&f, "methods", d)),
        };
        let max_body = f.opt::<ByteSize>("max_body", d);
        let max_in_flight = count(&f, "max_in_flight", ONE_OR_MORE, d);
        let timeout = positive(&f, "timeout", d);
        let diff = f.opt::<MirrorDiff>("diff", d);
        let guardrail = f.opt::<Guardrail>("guardrail", d);
        if d.error_count() > before {
            return None;
        }
        Some(Mirror {
            pool: pool?,
            fraction: fraction.ok()?,
            methods: match methods {
                Some(items) => Some(items.into_iter().collect::<Option<_>>()?),
                None => None,
            },
            max_body: max_body.ok()?,
            max_in_flight: max_in_flight.ok()?,
            timeout: timeout.ok()?,
            diff: diff.ok()?,
            guardrail: guardrail.ok()?,
        })
    }
}

impl Decode for MirrorDiff {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &["headers", "ignore", "mask", "mask_patterns", "mask_defaults", "baseline", "noise", "samples"],
            d,
        )?;
        let before = d.error_count();
        let headers = f.list::<String>("headers", d);
        for (i, h) in headers.iter().enumerate() {
            if let Some(h) = h {
                check_header_name(h, &format!("{}[{i}]", f.path("headers")), d);
            }
        }
        let ignore = f.list::<String>("ignore", d);
        for (i, p) in ignore.iter().enumerate() {
            if let Some(p) = p {
                check_pointer(p, &format!("{}[{i}]", f.path("ignore")), d);
            }
        }
        let mask = f.list::<String>("mask", d);
        for (i, m) in mask.iter().enumerate() {
            let p = format!("{}[{i}]", f.path("mask"));
            match m {
                Some(m) if m.starts_with('/') => check_pointer(m, &p, d),
                Some(m) if m.is_empty() => {
                    d.error(&p, "expected a JSON pointer like /user/email or a key name")
                }
                // Most likely a pointer without its leading `/`: a mask that matches nothing leaks.
                Some(m) if m.contains('/') => d.error(
                    &p,
                    format!("{m:?} is neither a JSON pointer (they start with /) nor a key name (no /)"),
                ),
                _ => {}
            }
        }
        let patterns = f.list::<String>("mask_patterns", d);
        for (i, r) in patterns.iter().enumerate() {
            if let Some(r) = r {
                check_regex_unanchored(r, &format!("{}[{i}]", f.path("mask_patterns")), d);
            }
        }
        let mask_defaults = f.opt::<bool>("mask_defaults", d);
        let baseline = f.opt::<DiffBaseline>("baseline", d);
        let noise = f.opt::<NoiseThresholds>("noise", d);
        let samples = count(&f, "samples", 1..=MAX_DIFF_SAMPLES, d);
        if d.error_count() > before {
            return None;
        }
        Some(MirrorDiff {
            headers: headers.into_iter().collect::<Option<_>>()?,
            ignore: ignore.into_iter().collect::<Option<_>>()?,
            mask: mask.into_iter().collect::<Option<_>>()?,
            mask_patterns: patterns.into_iter().collect::<Option<_>>()?,
            mask_defaults: mask_defaults.ok()?,
            baseline: baseline.ok()?,
            noise: noise.ok()?,
            samples: samples.ok()?,
        })
    }
}

impl Decode for DiffBaseline {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["pool", "fraction"], d)?;
        let pool = f.req::<String>("pool", d);
        let fraction = fraction_of(&f, "fraction", 1.0, d).and_then(|x| above_zero(&f, "fraction", x, d));
        Some(DiffBaseline { pool: pool?, fraction: fraction.ok()? })
    }
}

impl Decode for NoiseThresholds {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["relative_percent", "absolute_percent"], d)?;
        let relative = fraction_of(&f, "relative_percent", 1000.0, d);
        let absolute = fraction_of(&f, "absolute_percent", 100.0, d);
        Some(NoiseThresholds { relative_percent: relative.ok()?, absolute_percent: absolute.ok()? })
    }
}

impl Decode for Guardrail {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["enabled", "latency_ratio", "consecutive", "cooldown"], d)?;
        let enabled = f.opt::<bool>("enabled", d);
        let ratio = f.opt::<f64>("latency_ratio", d).and_then(|r| match r {
            Some(r) if !(r > 1.0 && r <= 1000.0) => {
                d.error(&f.path("latency_ratio"), format!("{r} is out of range: above 1 and at most 1000"));
                Err(())
            }
            r => Ok(r),
        });
        let consecutive = count(&f, "consecutive", ONE_OR_MORE, d);
        let cooldown = positive(&f, "cooldown", d);
        Some(Guardrail {
            enabled: enabled.ok()?,
            latency_ratio: ratio.ok()?,
            consecutive: consecutive.ok()?,
            cooldown: cooldown.ok()?,
        })
    }
}

// === field readers ===

/// An optional number from 0 to `max`.
fn fraction_of(f: &Fields<'_>, key: &str, max: f64, d: &mut Decoder) -> Result<Option<f64>, ()> {
    match f.opt::<f64>(key, d)? {
        Some(n) if !(0.0..=max).contains(&n) => {
            d.error(&f.path(key), format!("{n} is out of range 0 to {max}"));
            Err(())
        }
        n => Ok(n),
    }
}

fn above_zero(f: &Fields<'_>, key: &str, n: Option<f64>, d: &mut Decoder) -> Result<Option<f64>, ()> {
    if n == Some(0.0) {
        d.error(&f.path(key), "must be above 0; remove the block to turn it off");
        return Err(());
    }
    Ok(n)
}

/// An RFC 6901 JSON pointer: `/`-separated segments, `~` only as `~0` or `~1`.
fn check_pointer(p: &str, path: &str, d: &mut Decoder) {
    if !p.starts_with('/') {
        d.error(path, format!("{p:?} is not a JSON pointer: it must start with /"));
        return;
    }
    let bytes = p.as_bytes();
    let bad_escape =
        bytes.iter().enumerate().any(|(i, b)| *b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')));
    if bad_escape {
        d.error(path, format!("{p:?}: `~` must be written ~0 (and `/` inside a key ~1)"));
    }
}
