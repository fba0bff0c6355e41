//! Waiting for a condition instead of sleeping: poll it until a deadline ([`eventually!`],
//! [`wait_for`]), or check that it keeps holding for a while ([`stays_for!`]).
//!
//! Every duration given here is multiplied by `SLUICE_TEST_TIMEOUT_SCALE` (a positive number,
//! default 1), read once per process: a slow or busy machine stretches every wait at once
//! instead of failing, and a check that something does *not* happen watches longer too.
//!
//! Deadlines are wall-clock (`std::time::Instant`): not for tests on paused tokio time.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The environment variable that multiplies every deadline.
pub const SCALE_VAR: &str = "SLUICE_TEST_TIMEOUT_SCALE";

/// The first poll comes this soon after the first look; the gap then doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(10);
/// The longest gap between two looks: what a met condition may cost a timing-sensitive test.
const MAX_POLL: Duration = Duration::from_millis(50);

/// The factor from `SLUICE_TEST_TIMEOUT_SCALE` (1 when unset); panics on a value that is not a
/// positive number rather than guessing.
pub fn scale() -> f64 {
    static SCALE: OnceLock<f64> = OnceLock::new();
    *SCALE.get_or_init(|| match std::env::var(SCALE_VAR) {
        Err(_) => 1.0,
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => f,
            _ => panic!("{SCALE_VAR}={v:?}: expected a positive number, such as 2 or 1.5"),
        },
    })
}

/// `d` stretched by `SLUICE_TEST_TIMEOUT_SCALE`.
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(scale())
}

// === impl Deadline ===

/// A point in time `within` (scaled) from now, and the pace of polling until then.
#[derive(Debug)]
pub struct Deadline {
    within: Duration,
    start: Instant,
    at: Instant,
    poll: Duration,
}

impl Deadline {
    /// `within` from now, times `SLUICE_TEST_TIMEOUT_SCALE`.
    pub fn after(within: Duration) -> Self {
        let start = Instant::now();
        Self { within, start, at: start + scaled(within), poll: FIRST_POLL }
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Time since the deadline was set.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Panics, with `what` was awaited, once the deadline has passed.
    pub fn check(&self, what: impl FnOnce() -> String) {
        if self.passed() {
            panic!("{}: not within {}", what(), self.describe());
        }
    }

    /// Checks the deadline, then waits until the next look.
    pub async fn tick(&mut self, what: impl FnOnce() -> String) {
        self.check(what);
        tokio::time::sleep(self.next_poll()).await;
    }

    /// [`Deadline::tick`] for code outside an async runtime (or that must not yield).
    pub fn tick_blocking(&mut self, what: impl FnOnce() -> String) {
        self.check(what);
        std::thread::sleep(self.next_poll());
    }

    /// Waits until the next look without checking the deadline (for [`stays_for!`]).
    pub async fn pause(&mut self) {
        tokio::time::sleep(self.next_poll()).await;
    }

    /// `10s`, or `10s × 3 (SLUICE_TEST_TIMEOUT_SCALE)`.
    pub fn describe(&self) -> String {
        let s = scale();
        if (s - 1.0).abs() < f64::EPSILON {
            format!("{:?}", self.within)
        } else {
            format!("{:?} × {s} ({SCALE_VAR})", self.within)
        }
    }

    fn next_poll(&mut self) -> Duration {
        let poll =
            self.poll.min(self.at.saturating_duration_since(Instant::now())).max(Duration::from_millis(1));
        self.poll = (self.poll * 2).min(MAX_POLL);
        poll
    }
}

/// Polls `probe` until it gives `Ok`, for at most `within` (scaled); on timeout the panic names
/// `what` and the last `Err` (the state last seen).
pub async fn wait_for<T>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let mut deadline = Deadline::after(within);
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) => deadline.tick(|| format!("{what}; last seen: {last}")).await,
        }
    }
}

/// Polls a condition until it holds, or panics once `within` (scaled by
/// `SLUICE_TEST_TIMEOUT_SCALE`) has passed. The condition is an expression evaluated in the
/// caller's async context at every look, so it may `.await` and assign to the caller's variables
/// (to report the last state seen). An optional format string and arguments say what was awaited
/// (default: the condition's source text).
///
/// ```ignore
/// eventually!(Duration::from_secs(10), proxy.version().await == 2);
/// let mut last = Value::Null;
/// eventually!(WITHIN, { last = report(&cp).await; last["sent"] == 20 }, "20 sent: {last}");
/// ```
#[macro_export]
macro_rules! eventually {
    ($within:expr, $cond:expr $(,)?) => {
        $crate::eventually!($within, $cond, "`{}`", ::core::stringify!($cond))
    };
    ($within:expr, $cond:expr, $($what:tt)+) => {{
        let mut deadline = $crate::wait::Deadline::after($within);
        loop {
            let holds: bool = $cond;
            if holds {
                break;
            }
            deadline.tick(|| ::std::format!($($what)+)).await;
        }
    }};
}

/// Checks that a condition holds now and keeps holding for `duration` (scaled by
/// `SLUICE_TEST_TIMEOUT_SCALE`: a slower machine watches longer), looking as often as
/// [`eventually!`] does; panics the first time it does not. For "nothing happens for a while",
/// the one kind of test where time passing is the point, said out loud.
///
/// ```ignore
/// stays_for!(Duration::from_millis(1500), dp.version() == Some(1));
/// ```
#[macro_export]
macro_rules! stays_for {
    ($duration:expr, $cond:expr $(,)?) => {
        $crate::stays_for!($duration, $cond, "`{}`", ::core::stringify!($cond))
    };
    ($duration:expr, $cond:expr, $($what:tt)+) => {{
        let mut window = $crate::wait::Deadline::after($duration);
        loop {
            let holds: bool = $cond;
            if !holds {
                ::std::panic!(
                    "{}: stopped holding after {:?} of {}",
                    ::std::format!($($what)+),
                    window.elapsed(),
                    window.describe()
                );
            }
            if window.passed() {
                break;
            }
            window.pause().await;
        }
    }};
}

#[cfg(test)]
mod tests;
