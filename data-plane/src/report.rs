//! What a data plane tells about its routes' traffic split and mirroring: the periodic report to
//! the control plane, and the admin listener's `/canary` and `/shadow`, which show the same.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use sluice_proto::v1 as pb;

use crate::metrics::DURATION_BUCKETS;
use crate::shadow::DROP_REASONS;
use crate::snapshot::Snapshot;
use crate::state::Shared;
use crate::sync::lock;

/// Routes with a canary, cohorts or a mirror, for the periodic report.
pub(crate) fn routes(shared: &Shared) -> Vec<pb::RouteReport> {
    shared.serving.snapshot.load_full().map(|s| route_reports(&s)).unwrap_or_default()
}

/// The traffic of the active version and the few before it, oldest first.
pub(crate) fn versions(shared: &Shared) -> Vec<pb::VersionTraffic> {
    lock(&shared.recent)
        .iter()
        .map(|(version, since, stats)| {
            let (bucket_counts, sum_seconds) = stats.served.duration.per_bucket();
            pb::VersionTraffic {
                version: *version,
                since: unix(*since),
                requests: stats.served.requests.total(),
                errors: stats.served.requests.server_errors(),
                proxy_errors: stats.proxy_errors.load(Ordering::Relaxed),
                bounds_seconds: DURATION_BUCKETS.to_vec(),
                bucket_counts,
                sum_seconds,
            }
        })
        .collect()
}

/// Every route of `snap` that splits or mirrors traffic; counters are cumulative.
pub(crate) fn route_reports(snap: &Snapshot) -> Vec<pb::RouteReport> {
    snap.routes
        .iter()
        .filter(|r| r.split.is_some() || r.mirror.is_some())
        .map(|r| {
            let mut report = pb::RouteReport { route: r.name.to_string(), ..Default::default() };
            if let Some(split) = &r.split {
                report.variants = split
                    .in_use()
                    .map(|v| {
                        let (bucket_counts, sum) = v.stats.duration.per_bucket();
                        pb::VariantStats {
                            variant: v.name.to_string(),
                            pool: snap.pools[v.pool].name.to_string(),
                            requests: v.stats.requests.total(),
                            errors: v.stats.requests.server_errors(),
                            bounds_seconds: DURATION_BUCKETS.to_vec(),
                            bucket_counts,
                            sum_seconds: sum,
                        }
                    })
                    .collect();
                report.brake = split.brake().map(|b| {
                    let view = b.view();
                    pb::CanaryBrake {
                        pool: snap.pools[split.variants[crate::split::CANARY as usize].pool].name.to_string(),
                        weight_percent: split.canary_percent().unwrap_or_default(),
                        engaged: view.engaged,
                        reason: view.reason.unwrap_or_default(),
                        engaged_at: view.engaged_at.map_or(0, unix),
                    }
                });
            }
            if let Some(m) = &r.mirror {
                let state = &m.state;
                let samples = m.diff.as_ref().map_or(0, |d| d.samples);
                let diff = state.diff.view(samples);
                let guard = state.guard_view();
                let (relative, absolute) = m.diff.as_ref().map_or((0.0, 0.0), |d| d.noise);
                report.mirror = Some(pb::MirrorReport {
                    pool: snap.pools[m.pool].name.to_string(),
                    sent: state.sent.load(Ordering::Relaxed),
                    completed: state.completed.load(Ordering::Relaxed),
                    failed: state.failed.load(Ordering::Relaxed),
                    dropped: DROP_REASONS
                        .iter()
                        .zip(&state.dropped)
                        .map(|(reason, n)| ((*reason).to_owned(), n.load(Ordering::Relaxed)))
                        .collect(),
                    compared: diff.compared,
                    differed: diff.differed,
                    fields: diff
                        .fields
                        .iter()
                        .map(|f| pb::FieldDiff {
                            field: f.field.to_string(),
                            differed: f.differed,
                            noise: f.noise,
                        })
                        .collect(),
                    samples: diff
                        .samples
                        .into_iter()
                        .map(|s| pb::DiffSample {
                            at: unix(s.at),
                            request_id: s.request_id,
                            method: s.method,
                            path: s.path,
                            fields: s.fields.iter().map(ToString::to_string).collect(),
                            primary: s.primary,
                            candidate: s.candidate,
                        })
                        .collect(),
                    guardrail: Some(pb::Guardrail {
                        state: guard.state.to_owned(),
                        reason: guard.reason,
                        since: unix(guard.since),
                        resumes_at: guard.resumes_at.map_or(0, unix),
                        trips: guard.trips,
                    }),
                    baseline_compared: diff.baseline_compared,
                    noise_relative: relative,
                    noise_absolute: absolute,
                });
            }
            report
        })
        .collect()
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
