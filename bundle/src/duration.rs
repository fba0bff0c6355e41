//! Durations as they appear in config: strings such as `250ms`, `30s`, `1m30s`, `1.5h`.

use std::borrow::Cow;
use std::fmt;

use schemars::JsonSchema;
use serde::{Serialize, Serializer};

/// A non-negative span of time written as a string of `<number><unit>` parts (`ms`, `s`, `m`,
/// `h`), e.g. `250ms`, `30s`, `1m30s`. Displayed in its shortest exact form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

/// Longest duration any field accepts; larger values are almost certainly a unit mistake.
const MAX: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

const UNITS: [(&str, u64); 4] =
    [("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)];

// === impl Duration ===

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Parses `250ms`, `30s`, `1m30s`, `1.5h`. A bare number is refused: the unit is never guessed.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid duration {s:?}: expected a number with a unit (ms, s, m, h), like 250ms or 30s")
        };
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
            let (num, tail) = rest.split_at(num_len);
            let unit_len = tail.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let nanos_per = UNITS.iter().find(|(u, _)| *u == unit).map(|(_, n)| *n).ok_or_else(bad)?;
            total += scaled(num, nanos_per).ok_or_else(bad)?;
            if total > MAX.as_nanos() {
                return Err(format!("duration {s:?} is longer than a year"));
            }
            rest = tail;
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
        let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| bad())?;
        Ok(Self(std::time::Duration::new(secs, nanos)))
    }
}

/// `num` (digits with at most one dot) times `nanos_per`, exact to the nanosecond.
fn scaled(num: &str, nanos_per: u64) -> Option<u128> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(u128::from(nanos_per))?;
    if !frac.is_empty() {
        let digits: u128 = frac.parse().ok()?;
        let scale = 10u128.pow(u32::try_from(frac.len()).ok()?);
        let part = digits * u128::from(nanos_per);
        if !part.is_multiple_of(scale) {
            return None; // finer than a nanosecond
        }
        value += part / scale;
    }
    Some(value)
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (unit, per) in UNITS.iter().rev() {
            let per = u128::from(*per);
            if nanos.is_multiple_of(per) {
                return write!(f, "{}{unit}", nanos / per);
            }
        }
        // Below a millisecond: seconds with as many decimals as needed.
        let secs = self.0.as_secs();
        let frac = format!("{:09}", self.0.subsec_nanos());
        write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$",
            "description": "A duration such as 250ms, 30s, 1m30s or 1.5h.",
            "examples": ["250ms", "30s", "1m30s"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_units_and_compounds() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(Duration::parse("250ms"), Ok(ms(250)));
        assert_eq!(Duration::parse("30s"), Ok(ms(30_000)));
        assert_eq!(Duration::parse("1m30s"), Ok(ms(90_000)));
        assert_eq!(Duration::parse("1.5h"), Ok(ms(5_400_000)));
        assert_eq!(Duration::parse("0.5ms").map(|d| d.get().as_nanos()), Ok(500_000));
        assert_eq!(Duration::parse("0s"), Ok(ms(0)));
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        for bad in ["", "30", "30x", "s", "1.2.3s", "-1s", "1 s", "ms30", "1e3ms", "0.0000000001s"] {
            let err = Duration::parse(bad).expect_err(bad);
            assert!(err.contains("duration"), "{bad}: {err}");
        }
        assert!(Duration::parse("9000h").unwrap_err().contains("longer than a year"));
    }

    #[test]
    fn displays_shortest_exact_form() {
        assert_eq!(Duration::from_millis(90_000).to_string(), "90s");
        assert_eq!(Duration::from_millis(120_000).to_string(), "2m");
        assert_eq!(Duration::from_millis(1_500).to_string(), "1500ms");
        assert_eq!(Duration::parse("0.25ms").map(|d| d.to_string()), Ok("0.00025s".to_string()));
    }

    proptest! {
        #[test]
        fn display_round_trips(nanos in 0u64..(365 * 24 * 3600 * 1_000_000_000)) {
            let d = Duration(std::time::Duration::from_nanos(nanos));
            prop_assert_eq!(Duration::parse(&d.to_string()), Ok(d));
        }

        #[test]
        fn never_panics(s in "\\PC{0,16}") {
            let _ = Duration::parse(&s);
        }
    }
}
