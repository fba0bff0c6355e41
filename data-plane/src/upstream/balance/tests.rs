use std::net::Ipv4Addr;

use http::HeaderValue;
use http::header::COOKIE;

use super::*;

fn pick_many(b: &Balance, n: usize, picks: usize, in_flight: &[usize], headers: &HeaderMap) -> Vec<usize> {
    let next = AtomicUsize::new(0);
    let input = Inputs { headers, client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST) };
    let mut counts = vec![0; n];
    for _ in 0..picks {
        counts[b.pick(n, &next, |i| in_flight[i], &input)] += 1;
    }
    counts
}

const ADDRS: [&str; 4] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];

fn endpoints(weights: &[u32]) -> Vec<(&'static str, u32)> {
    ADDRS.iter().copied().zip(weights.iter().copied()).collect()
}

#[test]
fn round_robin_is_exactly_even() {
    let b = Balance::new(Balancer::RoundRobin, None, &endpoints(&[100, 1, 1]));
    assert_eq!(pick_many(&b, 3, 300, &[0; 3], &HeaderMap::new()), [100, 100, 100]);
}

#[test]
fn weighted_follows_weights_exactly_and_smoothly() {
    let b = Balance::new(Balancer::Weighted, None, &endpoints(&[500, 100, 100]));
    let Balance::Weighted { schedule } = &b else { panic!() };
    assert_eq!(&schedule[..], [0, 0, 1, 0, 2, 0, 0], "reduced by the common divisor, interleaved");
    assert_eq!(pick_many(&b, 3, 700, &[0; 3], &HeaderMap::new()), [500, 100, 100]);
}

#[test]
fn weighted_schedule_stays_bounded_for_huge_weights() {
    let weights: Vec<(String, u32)> = (0..100).map(|i| (format!("h{i}:1"), 10_000 - i)).collect();
    let eps: Vec<(&str, u32)> = weights.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    let b = Balance::new(Balancer::Weighted, None, &eps);
    let Balance::Weighted { schedule } = &b else { panic!() };
    assert!(schedule.len() as u64 <= MAX_SCHEDULE, "{}", schedule.len());
}

#[test]
fn least_request_avoids_the_busy_endpoint() {
    let b = Balance::new(Balancer::LeastRequest, None, &endpoints(&[1, 1]));
    assert_eq!(pick_many(&b, 2, 1000, &[50, 0], &HeaderMap::new()), [0, 1000]);
    // With three, the busiest is only chosen when both random candidates are it — never.
    let counts = pick_many(&b, 3, 3000, &[0, 0, 99], &HeaderMap::new());
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!(counts[0] > 1200 && counts[1] > 1200, "{counts:?}");
}

#[test]
fn consistent_hash_keeps_keys_on_their_endpoint() {
    let on = HashOn::Header("x-user".into());
    let four = Balance::new(Balancer::ConsistentHash, Some(&on), &endpoints(&[1, 1, 1, 1]));
    let three = Balance::new(Balancer::ConsistentHash, Some(&on), &endpoints(&[1, 1, 1]));
    let next = AtomicUsize::new(0);
    let mut moved = 0;
    for user in 0..2000 {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_str(&format!("user-{user}")).unwrap());
        let input = Inputs { headers: &h, client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST) };
        let a = four.pick(4, &next, |_| 0, &input);
        assert_eq!(a, four.pick(4, &next, |_| 0, &input), "same key, same endpoint");
        let b = three.pick(3, &next, |_| 0, &input);
        if a != 3 {
            moved += usize::from(a != b);
        }
    }
    assert_eq!(moved, 0, "removing endpoint 3 must not move keys that were on the others");
}

#[test]
fn consistent_hash_shares_follow_weights() {
    let on = HashOn::Cookie("sid".into());
    let b = Balance::new(Balancer::ConsistentHash, Some(&on), &endpoints(&[1, 1, 2]));
    let next = AtomicUsize::new(0);
    let mut counts = [0usize; 3];
    for s in 0..20_000 {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&format!("theme=dark; sid=s{s}")).unwrap());
        counts
            [b.pick(3, &next, |_| 0, &Inputs { headers: &h, client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST) })] +=
            1;
    }
    let share = |i: usize| counts[i] as f64 / 20_000.0;
    assert!((share(0) - 0.25).abs() < 0.05 && (share(1) - 0.25).abs() < 0.05, "{counts:?}");
    assert!((share(2) - 0.5).abs() < 0.05, "{counts:?}");
}

#[test]
fn cookie_lookup() {
    let mut h = HeaderMap::new();
    h.append(COOKIE, HeaderValue::from_static("a=1; sidx=2"));
    h.append(COOKIE, HeaderValue::from_static("sid=3"));
    assert_eq!(cookie(&h, "sid"), Some(&b"3"[..]));
    assert_eq!(cookie(&h, "a"), Some(&b"1"[..]));
    assert_eq!(cookie(&h, "b"), None);
}

#[test]
fn stable_hash_is_stable() {
    // Pinned: changing the hash would move every sticky user on upgrade.
    assert_eq!(stable_hash(b""), 17_280_346_270_528_514_342);
    assert_eq!(stable_hash(b"user-1"), 4_729_620_347_622_785_477);
}
