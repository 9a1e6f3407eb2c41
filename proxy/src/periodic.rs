//! A service's background round, run every so often while the proxy serves: its health
//! checks ([`crate::health`]), the sweep of its idle upstream connections ([`crate::pool`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::service::ServiceHandle;

/// A running round; dropping it stops it (a reload removed the service, or changed what
/// the round depends on).
pub(crate) struct Periodic(JoinHandle<()>);

impl Drop for Periodic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `round` on `service` every `period`, the first one period from now, until
/// `shutdown` turns true (or its sender goes), the service is dropped, or the [`Periodic`]
/// drops. A round that takes longer than `period` delays the next rather than bunching
/// them. The task holds the service weakly, so a removed service is not kept alive.
pub(crate) fn every<F, Fut>(
    service: &Arc<ServiceHandle>,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut round: F,
) -> Periodic
where
    F: FnMut(Arc<ServiceHandle>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let service = Arc::downgrade(service);
    Periodic(tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let Some(service) = service.upgrade() else {
                return;
            };
            round(service).await;
        }
    }))
}
