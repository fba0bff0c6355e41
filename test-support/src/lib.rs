//! What the tests of every crate share: a fake upstream that can misbehave ([`Upstream`],
//! [`Fault`]), an HTTP client ([`get`], [`try_get`], [`send`], [`try_send`]), child processes
//! whose log lines can be waited for ([`Process`]), and waits that poll a condition until a
//! deadline ([`eventually!`], [`wait_for`]) or check that it keeps holding ([`stays_for!`]), and the
//! fuzz targets' seed corpora ([`corpus`]).
//!
//! No test sleeps to synchronise: it waits for the condition it needs. Every deadline is
//! multiplied by `SLUICE_TEST_TIMEOUT_SCALE` (default 1), so a slow machine can stretch them all
//! at once: `SLUICE_TEST_TIMEOUT_SCALE=3 cargo nextest run --workspace`.
//!
//! A dev-dependency only.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod corpus;
mod http;
pub mod jwt;
mod process;
mod upstream;
pub mod wait;

pub use crate::http::{
    Body, Client, client, full, get, h2_client, request, send, trickle, try_get, try_send, zeros,
};
pub use crate::process::{Lines, Process};
pub use crate::upstream::{Fault, Reply, Upstream};
pub use crate::wait::{Deadline, scaled, wait_for};

/// A new, empty directory. Random as well as per process: process ids are reused, and a
/// directory an earlier run left behind (a CA that `certs init` will not overwrite, say) must
/// never be taken for this test's.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-test-{}-{}-{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        fastrand::u32(..)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
