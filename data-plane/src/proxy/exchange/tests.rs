//! The exchange's decisions against scripted endpoints on paused time: retries and where they
//! go, per-try and response deadlines, hedging, the retry budget, and what reaches the breaker.

use std::collections::VecDeque;
use std::time::SystemTime;

use http::{HeaderMap, Method, Uri, Version};
use sluice_bundle::Format;

use super::*;
use crate::routes::RouteRegistry;
use crate::snapshot::{Snapshot, SnapshotMeta};
use crate::upstream::PoolRegistry;

/// What a scripted endpoint does with a try.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The connection is refused: nothing was sent.
    Refuse,
    /// The connection closes before an answer.
    Reset,
    /// Answers at once with this status.
    Status(u16),
    /// Answers with 200 after this long (a slow first byte).
    Slow(Duration),
    /// Never answers.
    Hang,
}

/// Endpoints that follow one script: the n-th try (to whichever endpoint) takes the n-th step,
/// the last step repeating. Every try is logged as `(endpoint, when)`.
struct Script {
    steps: Mutex<VecDeque<Step>>,
    tries: Mutex<Vec<(usize, Instant)>>,
}

impl Script {
    fn new(steps: &[Step]) -> Self {
        Self { steps: Mutex::new(steps.iter().copied().collect()), tries: Mutex::new(Vec::new()) }
    }

    /// The endpoints tried, in order.
    fn tried(&self) -> Vec<usize> {
        lock(&self.tries).iter().map(|(i, _)| *i).collect()
    }
}

impl Transport for Script {
    type Answer = StatusCode;

    fn send(
        &self,
        pool: &Pool,
        endpoint: usize,
        req: Box<Request<RequestBody>>,
    ) -> impl Future<Output = Result<StatusCode, SendError>> {
        let step = {
            let mut steps = lock(&self.steps);
            if steps.len() > 1 { steps.pop_front() } else { steps.front().copied() }
        };
        lock(&self.tries).push((endpoint, Instant::now()));
        let address = pool.endpoints[endpoint].address.clone();
        async move {
            match step.expect("a step") {
                Step::Refuse => Err(SendError {
                    error: ProxyError::ConnectFailure { endpoint: address, reason: "refused".into() },
                    unsent: Some(req),
                    sent: None,
                }),
                Step::Reset => {
                    // As the HTTP/1.1 client: the head of a request that went comes back.
                    Err(SendError {
                        error: ProxyError::UpstreamReset { endpoint: address },
                        unsent: None,
                        sent: Some(req),
                    })
                }
                Step::Status(s) => Ok(StatusCode::from_u16(s).expect("a status")),
                Step::Slow(d) => {
                    tokio::time::sleep(d).await;
                    Ok(StatusCode::OK)
                }
                Step::Hang => std::future::pending().await,
            }
        }
    }

    fn status(answer: &StatusCode) -> StatusCode {
        *answer
    }
}

/// One pool `p` of three endpoints (never dialled) and one route `r` to it, active.
fn snapshot(pool_extra: &str, route_extra: &str) -> Snapshot {
    let yaml = format!(
        "listeners: [{{name: l, address: '127.0.0.1:0'}}]\n\
         pools: [{{name: p, endpoints: [{{address: '127.0.0.1:9'}}, {{address: '127.0.0.1:10'}}, \
         {{address: '127.0.0.1:11'}}], outlier_detection: {{enabled: false}}{pool_extra}}}]\n\
         routes: [{{name: r, pool: p{route_extra}}}]\n"
    );
    let config = sluice_bundle::parse(yaml.as_bytes(), Format::Yaml).expect("valid config");
    let meta = SnapshotMeta {
        version: 1,
        source: "test".into(),
        sha256: String::new(),
        loaded_at: SystemTime::now(),
    };
    let pools = PoolRegistry::new(1);
    let snap = Snapshot::compile(config, meta, &pools, &RouteRegistry::default()).expect("compiles");
    // As after a swap: the pools take their breaker settings.
    pools.activate(&snap.pools);
    snap
}

/// One request with `method` through route `r` of `snap`, over `script`. Returns its outcome
/// (the answering endpoint and status), the retries it took and how long it took.
async fn exchange(
    snap: &Snapshot,
    script: &Script,
    method: Method,
) -> (Result<(usize, StatusCode), ProxyError>, u32, Duration) {
    let (route, pool) = (&snap.routes[0], &snap.pools[0]);
    let template = Template {
        method: method.clone(),
        uri: Uri::from_static("/"),
        version: Version::HTTP_11,
        headers: HeaderMap::new(),
    };
    let hedge = route.hedge.as_ref().filter(|_| matches!(method, Method::GET | Method::HEAD));
    let resend = route.retry.may_resend(&method);
    let keeps =
        super::super::upstream_request::keeps_head(&route.retry, pool.protocol(), resend, hedge.is_some());
    let id = http::HeaderValue::from_static("test");
    let exchange = Exchange {
        transport: script,
        request_id: &id,
        client_ip: IpAddr::from([127, 0, 0, 1]),
        route,
        pool,
        template: keeps.then_some(&template),
        method_allows: route.retry.allows_method(&method),
        copy: None,
        has_body: false,
        hedge,
        probe: false,
        trace: None,
        last: AtomicU32::new(NONE),
        tries: AtomicU32::new(0),
        upstream_us: AtomicU64::new(u64::MAX),
        retries: AtomicU32::new(0),
    };
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = method;
    let start = Instant::now();
    let result = exchange.run(Box::new(req), None, start).await.map(|w| (w.endpoint, w.answer));
    (result, exchange.retries.load(Ordering::Relaxed), start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_is_retried_on_another_endpoint_whatever_the_method() {
    let snap = snapshot("", ", retries: {methods: [GET]}");
    let script = Script::new(&[Step::Refuse, Step::Status(200)]);
    let (result, retries, _) = exchange(&snap, &script, Method::POST).await;
    let (endpoint, status) = result.expect("answered");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(retries, 1);
    let tried = script.tried();
    assert_eq!(tried.len(), 2, "{tried:?}");
    assert_ne!(tried[0], tried[1], "the retry went elsewhere");
    assert_eq!(endpoint, tried[1]);
    let failures = |i: usize| snap.pools[0].endpoints[i].state.metrics.failures.load(Ordering::Relaxed);
    assert_eq!(failures(tried[0]), 1, "the refusal counts against its endpoint");
}

#[tokio::test(start_paused = true)]
async fn a_reset_is_retried_only_for_a_method_the_route_resends() {
    // The default policy keeps no copy of the head: the retry sends the one the try gave back.
    let snap = snapshot("", "");
    let script = Script::new(&[Step::Reset, Step::Status(200)]);
    let (result, retries, _) = exchange(&snap, &script, Method::GET).await;
    assert_eq!(result.expect("the GET was retried").1, StatusCode::OK);
    assert_eq!(retries, 1);

    let script = Script::new(&[Step::Reset]);
    let (result, retries, _) = exchange(&snap, &script, Method::POST).await;
    assert!(matches!(result, Err(ProxyError::UpstreamReset { .. })), "{:?}", result.map(|r| r.1));
    assert_eq!((retries, script.tried().len()), (0, 1), "a POST that may have arrived is not sent twice");
}

#[test]
fn the_head_is_copied_up_front_only_when_a_failed_try_cannot_give_it_back() {
    use sluice_bundle::UpstreamProtocol::{Http1, Http2};
    let keeps = |route_extra: &str, protocol, hedge| {
        let snap = snapshot("", route_extra);
        let retry = &snap.routes[0].retry;
        super::super::upstream_request::keeps_head(retry, protocol, retry.may_resend(&Method::GET), hedge)
    };
    assert!(!keeps("", Http1, false), "the default retries resets: the try gives the head back");
    assert!(!keeps(", retries: {max_attempts: 1}", Http1, false), "no retries");
    assert!(keeps(", retries: {retry_on: [503]}", Http1, false), "a retry after an answer");
    assert!(
        keeps(", retries: {per_try_timeout: 1s, retry_on: [timeout]}", Http1, false),
        "after a per-try timeout"
    );
    assert!(keeps("", Http2, false), "HTTP/2 connections keep the request they fail");
    assert!(keeps("", Http1, true), "a hedge sends a second copy while the first is out");
}

#[tokio::test(start_paused = true)]
async fn a_503_is_retried_when_the_route_says_so_and_the_last_answer_stands() {
    let snap = snapshot("", ", retries: {max_attempts: 3, retry_on: [503]}");
    let script = Script::new(&[Step::Status(503)]);
    let (result, retries, _) = exchange(&snap, &script, Method::GET).await;
    assert_eq!(
        result.expect("an answer").1,
        StatusCode::SERVICE_UNAVAILABLE,
        "attempts ran out: the client gets the 503"
    );
    assert_eq!(retries, 2);
    let mut tried = script.tried();
    tried.sort_unstable();
    assert_eq!(tried, [0, 1, 2], "each try went to an endpoint not tried yet");

    // A 500 is not on the list: answered as it is.
    let script = Script::new(&[Step::Status(500)]);
    let (result, retries, _) = exchange(&snap, &script, Method::GET).await;
    assert_eq!((result.expect("an answer").1, retries), (StatusCode::INTERNAL_SERVER_ERROR, 0));
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_moves_on_from_a_hung_endpoint() {
    let snap = snapshot("", ", timeout: 10s, retries: {per_try_timeout: 1s, retry_on: [timeout]}");
    let script = Script::new(&[Step::Hang, Step::Status(200)]);
    let (result, retries, took) = exchange(&snap, &script, Method::GET).await;
    let (endpoint, status) = result.expect("the second try answered");
    assert_eq!((status, retries), (StatusCode::OK, 1));
    assert_ne!(endpoint, script.tried()[0]);
    let times: Vec<Instant> = lock(&script.tries).iter().map(|(_, at)| *at).collect();
    let second = times[1] - times[0];
    // One second of per-try timeout, then a backoff of at most 250 ms.
    assert!(second >= Duration::from_secs(1) && second <= Duration::from_millis(1250), "{second:?}");
    assert!(took < Duration::from_millis(1300), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn the_response_deadline_ends_a_request_that_never_gets_an_answer() {
    let snap = snapshot("", ", timeout: 5s, retries: {max_attempts: 1}");
    let script = Script::new(&[Step::Hang]);
    let (result, _, took) = exchange(&snap, &script, Method::GET).await;
    match result {
        Err(ProxyError::UpstreamTimeout { timeout_ms, .. }) => assert_eq!(timeout_ms, 5000),
        other => panic!("expected a timeout, got {:?}", other.map(|r| r.1)),
    }
    assert_eq!(took, Duration::from_secs(5), "exactly the route's timeout, on paused time");
    assert_eq!(script.tried().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_to_another_endpoint_wins_over_a_slow_first_byte() {
    let snap = snapshot("", ", hedge: {delay: 100ms, budget_percent: 100}, retries: {max_attempts: 1}");
    let slow = Step::Slow(Duration::from_secs(2));
    let fast = Step::Slow(Duration::from_millis(10));
    let script = Script::new(&[slow, fast]);
    let (result, _, took) = exchange(&snap, &script, Method::GET).await;
    let (endpoint, status) = result.expect("answered");
    let tried = script.tried();
    assert_eq!(tried.len(), 2, "one hedge: {tried:?}");
    assert_eq!((status, endpoint), (StatusCode::OK, tried[1]), "the hedge answered");
    assert_eq!(took, Duration::from_millis(110), "hedged at 100 ms, answered 10 ms later");
    assert_eq!(snap.routes[0].runtime.budgets.hedges_won.load(Ordering::Relaxed), 1);
    // A POST never hedges.
    let script = Script::new(&[fast]);
    let (_, _, _) = exchange(&snap, &script, Method::POST).await;
    assert_eq!(script.tried().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_empty_retry_budget_denies_the_retry() {
    let snap = snapshot("", ", retries: {budget_percent: 0, min_retries_per_second: 0}");
    let script = Script::new(&[Step::Refuse]);
    let (result, retries, _) = exchange(&snap, &script, Method::GET).await;
    assert!(matches!(result, Err(ProxyError::ConnectFailure { .. })));
    assert_eq!((retries, script.tried().len()), (0, 1));
    let budgets = &snap.routes[0].runtime.budgets;
    assert_eq!(budgets.retries_denied.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn failed_tries_open_the_pool_breaker() {
    let breaker =
        ", circuit_breaker: {error_threshold_percent: 50, min_requests: 4, window: 10s, open_duration: 30s}";
    let snap = snapshot(breaker, ", retries: {max_attempts: 1}");
    let pool = &snap.pools[0];
    for _ in 0..4 {
        let script = Script::new(&[Step::Reset]);
        let admitted = pool.breaker.admit(Instant::now()).expect("closed so far");
        let (result, _, _) = exchange(&snap, &script, Method::GET).await;
        assert!(result.is_err());
        drop(admitted);
    }
    assert!(pool.breaker.admit(Instant::now()).is_err(), "four failures of four open the breaker");
    assert_eq!(pool.breaker.status(Instant::now()).state, "open");
}

const T: Duration = Duration::from_secs(5);
const S: Duration = Duration::from_secs(1);

#[test]
fn without_a_body_the_deadline_counts_from_the_start() {
    let start = Instant::now();
    let mut d = Deadline::new(start, T);
    assert!(d.check(None, start + T - S));
    assert!(!d.check(None, start + T));
}

#[test]
fn a_long_upload_is_not_cut_short() {
    let start = Instant::now();
    let upload = Upload::default();
    let mut d = Deadline::new(start, T);
    // The body is still being sent when the first deadline passes: it moves on.
    assert!(d.check(Some(&upload), start + T));
    assert_eq!(d.at, start + T + T);
    assert!(d.check(Some(&upload), start + T + T + S));
    assert_eq!(d.at, start + T + T + S + T);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_runs_from_the_end_of_the_upload() {
    let start = Instant::now();
    let upload = Upload::default();
    let mut d = Deadline::new(start, T);
    assert!(d.check(Some(&upload), start + T));
    // Sent whole at 7 s: the response is due by 12 s, and not later.
    tokio::time::advance(7 * S).await;
    upload.finish();
    assert!(d.check(Some(&upload), start + 2 * T));
    assert_eq!(d.at, start + 12 * S);
    assert!(!d.check(Some(&upload), start + 12 * S));
}
