//! A rollout strategy: how a new version reaches a fleet's data planes, step by step, and the
//! health gates each step must pass before the next. Given with `sluice apply --rollout FILE`; the
//! control plane's rollout driver walks it. Same conventions as `model`: optional fields stay
//! `None` and `*_or_default` gives the effective value.
//!
//! ```yaml
//! steps: [{nodes: 1, bake: 60s}, {percent: 50, bake: 120s}, {percent: 100}]
//! gates: {max_error_rate: 1%, max_p99: 500ms, max_p99_ratio_vs_baseline: 1.5, min_requests: 100}
//! ```

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::decode::{Decode, Decoder, Fields, describe};
use crate::parse::{Format, positive, read_document};
use crate::{ConfigErrors, Duration};

/// Gates are judged this often while a step bakes.
pub const DEFAULT_GATE_INTERVAL: Duration = Duration::from_secs(60);
/// A step whose data planes have not all ACKed by then fails.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
/// At most this share of a step's requests may fail (5xx or a proxy error): success ≥ 99 %.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
pub const DEFAULT_MAX_P99: Duration = Duration::from_millis(500);
/// Requests a step's nodes must have served on the new version before its gates are judged.
pub const DEFAULT_MIN_REQUESTS: u32 = 100;
pub const MAX_STEPS: usize = 20;

/// How a version is rolled out.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The steps, in order; each reaches more data planes than the one before. After the last,
    /// every data plane of the fleet has the version.
    pub steps: Vec<RolloutStep>,
    /// What a step must show before the rollout moves on. At their defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<Gates>,
    /// How often gates are judged during a bake. Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time a step's data planes have to ACK the version; then the rollout fails. Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Duration>,
}

/// One step: exactly one of `nodes` and `percent`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutStep {
    /// This many data planes (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub nodes: Option<u32>,
    /// This share of the fleet's data planes, rounded up (above 0, at most 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
    /// How long the step runs, with its gates judged every `interval`, before the next starts.
    /// Absent: the step passes once its data planes have ACKed (and its gates hold, if judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<Duration>,
}

/// Health gates, judged on the traffic the step's data planes served on the new version.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Largest share of failed requests (5xx, connect failures, timeouts), written `1%`.
    /// Default 1%.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "percent")]
    #[schemars(with = "Option<String>")]
    pub max_error_rate: Option<f64>,
    /// Largest p99 latency. Default 500ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<Duration>,
    /// Largest p99 relative to the nodes still on the previous version, e.g. 1.5. Absent: not
    /// judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio_vs_baseline: Option<f64>,
    /// Requests below which gates are not judged yet. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_requests: Option<u32>,
}

/// A step's size, resolved against a fleet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepSize {
    Nodes(u32),
    Percent(f64),
}

// === impl Rollout ===

impl Rollout {
    pub fn interval_or_default(&self) -> Duration {
        self.interval.unwrap_or(DEFAULT_GATE_INTERVAL)
    }

    pub fn progress_deadline_or_default(&self) -> Duration {
        self.progress_deadline.unwrap_or(DEFAULT_PROGRESS_DEADLINE)
    }

    pub fn gates_or_default(&self) -> Gates {
        self.gates.clone().unwrap_or_default()
    }
}

impl RolloutStep {
    pub fn size(&self) -> StepSize {
        match (self.nodes, self.percent) {
            (Some(n), _) => StepSize::Nodes(n),
            (None, Some(p)) => StepSize::Percent(p),
            (None, None) => StepSize::Percent(100.0),
        }
    }

    /// How many of `fleet` data planes this step covers: at least one, at most all.
    pub fn nodes_of(&self, fleet: usize) -> usize {
        let n = match self.size() {
            StepSize::Nodes(n) => n as usize,
            StepSize::Percent(p) => (fleet as f64 * p / 100.0).ceil() as usize,
        };
        n.clamp(1.min(fleet), fleet)
    }
}

impl Gates {
    pub fn max_error_rate_or_default(&self) -> f64 {
        self.max_error_rate.unwrap_or(DEFAULT_MAX_ERROR_RATE)
    }

    pub fn max_p99_or_default(&self) -> Duration {
        self.max_p99.unwrap_or(DEFAULT_MAX_P99)
    }

    pub fn min_requests_or_default(&self) -> u32 {
        self.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS)
    }
}

fn percent<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        // Rounded: 0.07 * 100 is 7.000000000000001 in floating point.
        Some(f) => s.serialize_str(&format!("{}%", (f * 1e6).round() / 1e4)),
        None => s.serialize_none(),
    }
}

/// The strategies `--strategy NAME` knows.
pub const STRATEGY_NAMES: [&str; 3] = ["canary", "linear", "all-at-once"];

/// A built-in strategy by name, with the default gates: `canary` (one data plane for 60s, half
/// the fleet for 120s, then all), `linear` (a quarter more every 60s) or `all-at-once` (no
/// rollout: `Some(None)`). `None` for an unknown name.
pub fn builtin(name: &str) -> Option<Option<Rollout>> {
    let step = |nodes, percent, bake: u64| RolloutStep {
        nodes,
        percent,
        bake: (bake > 0).then(|| Duration::from_secs(bake)),
    };
    let steps = match name {
        "canary" => vec![step(Some(1), None, 60), step(None, Some(50.0), 120), step(None, Some(100.0), 0)],
        "linear" => vec![
            step(None, Some(25.0), 60),
            step(None, Some(50.0), 60),
            step(None, Some(75.0), 60),
            step(None, Some(100.0), 0),
        ],
        "all-at-once" => return Some(None),
        _ => return None,
    };
    Some(Some(Rollout { steps, gates: None, interval: None, progress_deadline: None }))
}

/// Parses and validates a rollout document, reporting every problem with its path.
pub fn parse_rollout(bytes: &[u8], format: Format) -> Result<Rollout, ConfigErrors> {
    let value = read_document(bytes, format)?;
    let mut d = Decoder::default();
    let rollout = Rollout::decode(&value, "", &mut d);
    d.finish(rollout)
}

// === decoding ===

impl Decode for Rollout {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["steps", "gates", "interval", "progress_deadline"], d)?;
        let steps = match f.raw("steps") {
            None => {
                d.error(&f.path("steps"), "missing required field: a rollout needs at least one step");
                Vec::new()
            }
            Some(Value::Array(a)) if a.is_empty() => {
                d.error(&f.path("steps"), "a rollout needs at least one step");
                Vec::new()
            }
            Some(Value::Array(a)) if a.len() > MAX_STEPS => {
                d.error(&f.path("steps"), format!("{} steps; at most {MAX_STEPS}", a.len()));
                Vec::new()
            }
            Some(_) => f.list::<RolloutStep>("steps", d),
        };
        // Each step must reach more of the fleet than the one before, in the same unit.
        for i in 1..steps.len() {
            let (Some(Some(a)), Some(Some(b))) = (steps.get(i - 1), steps.get(i)) else { continue };
            let grows = match (a.size(), b.size()) {
                (StepSize::Nodes(x), StepSize::Nodes(y)) => y > x,
                (StepSize::Percent(x), StepSize::Percent(y)) => y > x,
                // Nodes then a share (or back) cannot be compared without the fleet: allowed.
                _ => true,
            };
            if !grows {
                d.error(
                    &format!("{}[{i}]", f.path("steps")),
                    "each step must reach more data planes than the one before",
                );
            }
        }
        let gates = f.opt::<Gates>("gates", d);
        let interval = positive(&f, "interval", d);
        let deadline = positive(&f, "progress_deadline", d);
        Some(Rollout {
            steps: steps.into_iter().collect::<Option<_>>()?,
            gates: gates.ok()?,
            interval: interval.ok()?,
            progress_deadline: deadline.ok()?,
        })
    }
}

impl Decode for RolloutStep {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["nodes", "percent", "bake"], d)?;
        let nodes = f.opt::<u32>("nodes", d).and_then(|n| match n {
            Some(0) => {
                d.error(&f.path("nodes"), "must be at least 1");
                Err(())
            }
            n => Ok(n),
        });
        let percent = f.opt::<f64>("percent", d).and_then(|p| match p {
            Some(p) if !(p > 0.0 && p <= 100.0) => {
                d.error(&f.path("percent"), format!("{p} is out of range: above 0 and at most 100"));
                Err(())
            }
            p => Ok(p),
        });
        let one_size = f.raw("nodes").is_some() != f.raw("percent").is_some();
        if !one_size {
            let why = if f.raw("nodes").is_some() {
                "nodes and percent are exclusive; use one"
            } else {
                "needs nodes (a count) or percent (a share of the fleet)"
            };
            d.error(path, why);
        }
        let bake = positive(&f, "bake", d);
        if !one_size {
            return None;
        }
        Some(RolloutStep { nodes: nodes.ok()?, percent: percent.ok()?, bake: bake.ok()? })
    }
}

impl Decode for Gates {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &["max_error_rate", "max_p99", "max_p99_ratio_vs_baseline", "min_requests"],
            d,
        )?;
        let error_rate = match f.raw("max_error_rate") {
            None => Ok(None),
            Some(Value::String(s)) => {
                parse_percent(s).map(Some).map_err(|e| d.error(&f.path("max_error_rate"), e))
            }
            Some(other) => {
                d.error(
                    &f.path("max_error_rate"),
                    format!("expected a percentage like 1% or 0.5%, found {}", describe(other)),
                );
                Err(())
            }
        };
        let p99 = positive(&f, "max_p99", d);
        let ratio = f.opt::<f64>("max_p99_ratio_vs_baseline", d).and_then(|r| match r {
            Some(r) if r < 1.0 => {
                d.error(
                    &f.path("max_p99_ratio_vs_baseline"),
                    format!("{r} would fail a version exactly as fast as the baseline; use 1 or more"),
                );
                Err(())
            }
            r => Ok(r),
        });
        let min_requests = f.opt::<u32>("min_requests", d).and_then(|n| match n {
            Some(0) => {
                d.error(&f.path("min_requests"), "must be at least 1");
                Err(())
            }
            n => Ok(n),
        });
        Some(Gates {
            max_error_rate: error_rate.ok()?,
            max_p99: p99.ok()?,
            max_p99_ratio_vs_baseline: ratio.ok()?,
            min_requests: min_requests.ok()?,
        })
    }
}

/// `"1%"`, `"0.5%"` as a fraction (0.01, 0.005).
fn parse_percent(s: &str) -> Result<f64, String> {
    let n = s
        .trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("{s:?} is not a percentage like 1% or 0.5%"))?;
    if (0.0..=100.0).contains(&n) { Ok(n / 100.0) } else { Err(format!("{s} is out of range 0% to 100%")) }
}

#[cfg(test)]
mod tests;
