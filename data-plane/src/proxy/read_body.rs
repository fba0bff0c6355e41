//! Read body: the start of the request body (the route's `request_body.buffer`, 64 KiB by
//! default), read before the request takes a place under the listener's limit or in its pool, so
//! a client that sends its body slowly holds no upstream connection or slot meanwhile (nginx reads
//! bodies first for the same reason). A body that ends within that much goes upstream whole.
//!
//! Waits for the client only; refuses a body that stalls for the route's read timeout, arrives
//! slower than its minimum rate (408) or turns out larger than its limit (413). It may not change
//! the request's head.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use http::Request;
use http_body::Body as _;
use tokio::time::{Instant, Sleep, sleep_until};

use super::route::Routed;
use crate::body::{BodyError, ClientBody, Early, Pace};
use crate::error::ProxyError;
use crate::upstream::request_body_failed;

/// What was read of a request body before it went upstream, and the pace the rest must keep.
pub(super) struct BodyStart {
    /// `None`: the request has no body, or the route reads none early.
    pub early: Option<Box<Early>>,
    pub pace: Pace,
}

/// Reads the start of the body; `start`: when the request arrived, where its pace counts from.
pub(super) async fn read(
    routed: &Routed<'_>,
    req: &mut Request<ClientBody>,
    start: Instant,
) -> Result<BodyStart, ProxyError> {
    let rules = routed.route.body;
    let mut pace = Pace { start, grace: rules.read_timeout, min_rate: rules.min_rate, received: 0 };
    if rules.buffer == 0 || req.body().is_end_stream() {
        return Ok(BodyStart { early: None, pace });
    }
    let limit = routed.route.max_body;
    let body = req.body_mut();
    let mut early = Box::<Early>::default();
    // Armed the first time the body keeps us waiting: a body that came with its head never
    // touches the clock or the timer wheel.
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    let due = |pace: &Pace, now: Instant| {
        let stall = now + rules.read_timeout;
        pace.deadline().map_or(stall, |d| d.min(stall))
    };
    poll_fn(|cx| {
        loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => {
                            early.trailers = frame.into_trailers().ok();
                            early.ended = true;
                            return Poll::Ready(Ok(()));
                        }
                    };
                    let len = data.len();
                    early.chunks.push_back(data);
                    if pace.received + len as u64 > limit {
                        return Poll::Ready(Err(ProxyError::PayloadTooLarge { limit }));
                    }
                    // `pace.received` counts what was read, here and when the rest streams.
                    if let Some(timer) = &mut timer {
                        let now = Instant::now();
                        if pace.behind(len, now) {
                            return Poll::Ready(Err(too_slow(&pace)));
                        }
                        timer.as_mut().reset(due(&pace, now));
                    } else {
                        pace.received += len as u64;
                    }
                    if body.is_end_stream() {
                        early.ended = true;
                        return Poll::Ready(Ok(()));
                    }
                    if pace.received >= rules.buffer {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(request_body_failed(&e))),
                Poll::Ready(None) => {
                    early.ended = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => {
                    let timer =
                        timer.get_or_insert_with(|| Box::pin(sleep_until(due(&pace, Instant::now()))));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let behind = pace.deadline().is_some_and(|d| Instant::now() >= d);
                    return Poll::Ready(Err(if behind {
                        too_slow(&pace)
                    } else {
                        ProxyError::ClientTimeout(
                            format!("no request body bytes for {:?}", rules.read_timeout).into(),
                        )
                    }));
                }
            }
        }
    })
    .await?;
    Ok(BodyStart { early: Some(early), pace })
}

fn too_slow(pace: &Pace) -> ProxyError {
    request_body_failed(&BodyError::TooSlow(pace.min_rate))
}
