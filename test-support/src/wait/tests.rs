use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::wait_for;

#[tokio::test]
async fn eventually_returns_once_the_condition_holds() {
    let looks = AtomicUsize::new(0);
    eventually!(Duration::from_secs(5), looks.fetch_add(1, Ordering::SeqCst) == 3);
    assert_eq!(looks.load(Ordering::SeqCst), 4, "it looked until the condition held, then stopped");
}

#[tokio::test]
#[should_panic(expected = "the answer: not within 100ms")]
async fn eventually_fails_at_the_deadline_saying_what_it_awaited() {
    let answer = 41;
    eventually!(Duration::from_millis(100), answer == 42, "the answer");
}

#[tokio::test]
#[should_panic(expected = "`answer == 42`: not within")]
async fn without_a_message_eventually_names_the_condition() {
    let answer = 41;
    eventually!(Duration::from_millis(50), answer == 42);
}

#[tokio::test]
async fn wait_for_returns_the_value_and_fails_with_the_last_state_seen() {
    let mut n = 0;
    let got = wait_for(Duration::from_secs(5), "n reaches 3", async || {
        n += 1;
        if n == 3 { Ok(n) } else { Err(format!("n = {n}")) }
    })
    .await;
    assert_eq!(got, 3);
    let failed = tokio::spawn(wait_for(Duration::from_millis(50), "never", async || {
        Err::<(), _>("still no".to_owned())
    }));
    let panic = failed.await.unwrap_err().into_panic();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.starts_with("never; last seen: still no: not within 50ms"), "{message}");
}

#[tokio::test]
async fn stays_for_watches_the_whole_window() {
    let started = Instant::now();
    stays_for!(Duration::from_millis(200), true);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
#[should_panic(expected = "quiet: stopped holding after")]
async fn stays_for_fails_as_soon_as_the_condition_breaks() {
    let started = Instant::now();
    stays_for!(Duration::from_secs(5), started.elapsed() < Duration::from_millis(100), "quiet");
}
