use std::future::pending;

use super::*;

const T: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn without_a_body_the_timeout_counts_from_the_start() {
    let started = Instant::now();
    assert_eq!(within_response_timeout(T, None, std::pin::pin!(pending::<()>())).await, None);
    assert_eq!(started.elapsed(), T);
}

#[tokio::test(start_paused = true)]
async fn a_long_upload_is_not_cut_short() {
    let upload = Upload::default();
    let started = Instant::now();
    // The body takes 12 s to send; the response comes 3 s after that.
    let exchange = async {
        tokio::time::sleep(Duration::from_secs(12)).await;
        upload.finish();
        tokio::time::sleep(Duration::from_secs(3)).await;
        "response"
    };
    assert_eq!(within_response_timeout(T, Some(&upload), std::pin::pin!(exchange)).await, Some("response"));
    assert_eq!(started.elapsed(), Duration::from_secs(15));
}

#[tokio::test(start_paused = true)]
async fn the_timeout_runs_from_the_end_of_the_upload() {
    let upload = Upload::default();
    let started = Instant::now();
    let exchange = async {
        tokio::time::sleep(Duration::from_secs(7)).await;
        upload.finish();
        pending::<()>().await
    };
    assert_eq!(within_response_timeout(T, Some(&upload), std::pin::pin!(exchange)).await, None);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(12) && waited < Duration::from_secs(13), "{waited:?}");
}
