use super::*;

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
