//! The one lock helper: a poisoned mutex still holds consistent data here (every critical section
//! is a few assignments), so a panic elsewhere must not take the proxy down with it.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
