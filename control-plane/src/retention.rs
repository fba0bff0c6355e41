//! Forgetting departed data planes: pods an autoscaler replaced leave rows (and their last
//! reports) that would otherwise show as DISCONNECTED for ever. The audit trail is never pruned.
//! Every replica prunes; the deletes are idempotent, so no leader is needed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::service::ControlPlane;

/// Prunes what has been silent for `retention`, at start and then every tenth of it (between a
/// minute and an hour), until shutdown.
pub async fn run(cp: Arc<ControlPlane>, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick =
        tokio::time::interval((retention / 10).clamp(Duration::from_secs(60), Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match cp.store.prune_departed(retention).await {
            Ok((0, 0)) => {}
            Ok((nodes, reports)) => {
                cp.metrics.pruned(nodes);
                tracing::info!(
                    nodes,
                    reports,
                    ?retention,
                    "forgot data planes not heard from within the retention"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot prune departed data planes"),
        }
    }
}
