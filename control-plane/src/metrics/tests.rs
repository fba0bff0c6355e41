use super::*;

#[test]
fn apply_results_follow_the_error() {
    let ok: Result<(), Error> = Ok(());
    assert_eq!(ApplyResult::of(&ok), ApplyResult::Applied);
    let invalid = Err::<(), _>(Error::InvalidArgument("bad fleet".into()));
    assert_eq!(ApplyResult::of(&invalid), ApplyResult::Invalid);
    let missing = Err::<(), _>(Error::NotFound("no version 9".into()));
    assert_eq!(ApplyResult::of(&missing), ApplyResult::Invalid, "a rollback to a version that is not there");
    let conflict = Err::<(), _>(Error::Conflict { expected: 1, actual: 2 });
    assert_eq!(ApplyResult::of(&conflict), ApplyResult::Conflict);
    let down = Err::<(), _>(Error::Unavailable("PostgreSQL did not answer".into()));
    assert_eq!(ApplyResult::of(&down), ApplyResult::Error);
}

#[test]
fn a_stream_counts_until_its_guard_drops() {
    let m = Metrics::default();
    let edge = m.fleet("edge");
    let first = edge.stream_opened();
    let second = m.fleet("edge").stream_opened();
    assert_eq!(edge.streams(), 2, "one set of counters per fleet");
    drop(first);
    assert_eq!(edge.streams(), 1);
    drop(second);
    assert_eq!(edge.streams(), 0);
    assert_eq!(m.fleet("other").streams(), 0);
}
