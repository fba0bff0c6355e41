use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::control::ResponseDirectives;
use super::*;

fn route(yaml: &str) -> sluice_bundle::Route {
    let doc = format!(
        "listeners: [{{name: l, address: '127.0.0.1:1'}}]\npools: [{{name: p, endpoints: [{{address: '127.0.0.1:2'}}]}}]\nroutes:\n  - name: r\n    pool: p\n    cache: {yaml}\n"
    );
    sluice_bundle::parse(doc.as_bytes(), sluice_bundle::Format::Yaml).expect("valid").routes.remove(0)
}

fn cache(capacity: u64) -> Arc<RouteCache> {
    Arc::new(RouteCache::new(&route("{memory_percent: 100, max_object: 10KiB}"), Box::new([]), capacity))
}

fn key(path: &str) -> Key {
    Key { pool: 0, authorized: false, target: format!("h\0{path}").into_bytes().into(), variant: None }
}

fn object(body: &'static str, max_age: u64) -> Object {
    let cc = ResponseDirectives::default();
    let mut o = Object::new(
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::from_static(body.as_bytes()),
        SystemTime::now(),
        Some(Duration::ZERO),
        Some(Duration::from_secs(max_age)),
        &cc,
    );
    o.weight += body.len() as u64;
    o
}

fn headers(fields: &[(&str, &str)]) -> HeaderMap {
    fields
        .iter()
        .map(|(n, v)| (HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap()))
        .collect()
}

#[test]
fn variants_are_found_by_the_fields_the_response_varies_on() {
    let c = cache(1 << 20);
    let vary: Arc<[HeaderName]> = Arc::from(vec![HeaderName::from_static("accept-language")]);
    c.insert(key("/a"), Some(vary.clone()), &headers(&[("accept-language", "en")]), object("en", 60));
    c.insert(key("/a"), Some(vary), &headers(&[("accept-language", "de")]), object("de", 60));
    let get = |lang: Option<&str>| {
        let h = lang.map_or_else(HeaderMap::new, |l| headers(&[("accept-language", l)]));
        c.find(key("/a"), &h).object.map(|o| o.body.clone())
    };
    assert_eq!(get(Some("en")).as_deref(), Some(&b"en"[..]));
    assert_eq!(get(Some("de")).as_deref(), Some(&b"de"[..]));
    assert_eq!(get(Some("fr")), None);
    // An absent field is not an empty one.
    assert_eq!(get(None), None);
    // The variant's key is what a fetch for French would be stored and coalesced under.
    let found = c.find(key("/a"), &headers(&[("accept-language", "fr")]));
    assert!(found.key.variant.is_some());
}

#[test]
fn invalidation_removes_every_variant_and_class_and_purge_matches_paths() {
    let c = cache(1 << 20);
    c.insert(key("/a"), None, &HeaderMap::new(), object("a", 60));
    c.insert(Key { authorized: true, ..key("/a") }, None, &HeaderMap::new(), object("a2", 60));
    c.insert(key("/a?x=1"), None, &HeaderMap::new(), object("ax", 60));
    c.insert(key("/ab"), None, &HeaderMap::new(), object("ab", 60));
    c.insert(key("/b/c"), None, &HeaderMap::new(), object("bc", 60));
    assert_eq!(c.invalidate(b"h\0/a"), 2);
    assert!(c.find(key("/a"), &HeaderMap::new()).object.is_none());
    assert!(c.find(key("/a?x=1"), &HeaderMap::new()).object.is_some(), "another query is another resource");
    // A path purge takes the path with any query, not a longer path.
    assert_eq!(c.purge(Some(b"/a"), None), 1);
    assert!(c.find(key("/ab"), &HeaderMap::new()).object.is_some());
    assert_eq!(c.purge(None, Some(b"/b/")), 1);
    assert_eq!(c.purge(None, None), 1);
    assert_eq!(c.len(), 0);
}

#[test]
fn the_store_stays_within_its_capacity() {
    let c = cache(64 << 10);
    let body: &'static str = Box::leak("x".repeat(4000).into_boxed_str());
    for i in 0..200 {
        c.insert(key(&format!("/{i}")), None, &HeaderMap::new(), object(body, 60));
    }
    assert!(c.weight() <= 64 << 10, "{} bytes", c.weight());
    assert!(c.stats.evictions.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn followers_wait_for_the_leader_and_learn_whether_it_stored() {
    let c = cache(1 << 20);
    let Join::Lead(mut leader) = c.join(&key("/x")) else { panic!("the first request leads") };
    let Join::Follow(flight) = c.join(&key("/x")) else { panic!("the second follows") };
    let waiter = tokio::spawn(async move { flight.wait(Duration::from_secs(5)).await });
    tokio::task::yield_now().await;
    leader.stored = true;
    drop(leader);
    assert_eq!(waiter.await.unwrap(), Some(true));
    // The flight is over: the next request leads again.
    assert!(matches!(c.join(&key("/x")), Join::Lead(_)));
    // A leader that stores nothing lets followers go upstream; a slow one times them out.
    let Join::Lead(leader) = c.join(&key("/y")) else { panic!() };
    let Join::Follow(flight) = c.join(&key("/y")) else { panic!() };
    assert_eq!(flight.wait(Duration::from_millis(10)).await, None);
    drop(leader);
    assert_eq!(flight.wait(Duration::from_millis(10)).await, Some(false));
}

#[test]
fn ages_and_freshness() {
    let mut o = object("a", 10);
    o.response_time = SystemTime::now() - Duration::from_secs(4);
    o.initial_age = Some(Duration::from_secs(3));
    let now = SystemTime::now();
    assert_eq!(o.age(now).map(|a| a.as_secs()), Some(7));
    assert!(o.is_fresh(now));
    assert_eq!(o.ttl(now), 2);
    o.initial_age = Some(Duration::from_secs(30));
    assert!(!o.is_fresh(now));
    assert_eq!(o.staleness(now).map(|s| s.as_secs()), Some(24));
    o.initial_age = None;
    assert!(!o.is_fresh(now), "an unreadable Age is stale");
}
