//! The hold queue of container services, for scale from zero (SPEC.md "Scaling"): a
//! request that finds no endpoint waits, bounded by `limits.max_queued_requests`, until the
//! reconciler publishes one through [`ServiceHandle::set_endpoints`] or
//! `scale.cold_start_timeout` passes.
//!
//! - Only an *empty* endpoint set holds a request. A set whose endpoints are all ejected or
//!   failing health checks is balanced over anyway (panic routing, see [`crate::balance`]):
//!   they exist, and holding would only add the reconciler's reaction time to the outage.
//! - Holding happens before the request body is read, so no body is lost or buffered.
//! - A held request counts in `queued` ([`LoadSnapshot::queued`], `shoal_requests_queued`)
//!   and not in `in_flight` until it is released, so the autoscaler can add the two without
//!   counting a request twice. The request timeout starts when it is released.
//! - The reconciler learns about demand at once through [`Activator::demand`], a counter
//!   bumped for every held request, instead of at its next tick.
//! - Waiting is on a [`Notify`] fired by `set_endpoints`; nothing polls.
//! - A service none of whose replicas can become ready without an operator (every slot
//!   taken by one that ended for good, see [`Activator::set_startable`]) holds nothing: its
//!   requests get 503 `no_endpoints` at once, as from Envoy or HAProxy with no server up,
//!   rather than after the whole `cold_start_timeout`.
//!
//! [`ServiceHandle::set_endpoints`]: crate::ServiceHandle::set_endpoints
//! [`LoadSnapshot::queued`]: crate::LoadSnapshot::queued

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{watch, Notify};

use crate::endpoint::EndpointSet;
use crate::errors::OwnError;

pub(crate) struct Activator {
    /// Requests held now.
    queued: AtomicUsize,
    /// Both limits change on a reload while requests may be held; a held request keeps
    /// the deadline it started with.
    max_queued: AtomicUsize,
    cold_start_timeout_ns: AtomicU64,
    gauge: IntGauge,
    /// Woken by every non-empty endpoint set published.
    published: Notify,
    /// How many requests have ever been held; the reconciler awaits its changes.
    demand: watch::Sender<u64>,
    /// Whether a replica may still become ready (the reconciler's word).
    startable: AtomicBool,
    /// Shutting down and done draining: nothing is held any more.
    closed: AtomicBool,
}

impl Activator {
    pub(crate) fn new(max_queued: usize, cold_start_timeout: Duration, gauge: IntGauge) -> Self {
        gauge.set(0);
        Activator {
            queued: AtomicUsize::new(0),
            max_queued: AtomicUsize::new(max_queued),
            cold_start_timeout_ns: AtomicU64::new(nanos(cold_start_timeout)),
            gauge,
            published: Notify::new(),
            demand: watch::Sender::new(0),
            startable: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        }
    }

    /// New limits from a reload, for requests held from now on.
    pub(crate) fn configure(&self, max_queued: usize, cold_start_timeout: Duration) {
        self.max_queued.store(max_queued, Ordering::Relaxed);
        self.cold_start_timeout_ns
            .store(nanos(cold_start_timeout), Ordering::Relaxed);
    }

    /// Requests held now.
    pub(crate) fn queued(&self) -> u64 {
        u64::try_from(self.queued.load(Ordering::Relaxed)).unwrap_or(u64::MAX)
    }

    pub(crate) fn demand(&self) -> watch::Receiver<u64> {
        self.demand.subscribe()
    }

    /// Whether a replica may still become ready without an operator's action; held requests
    /// are answered at once when none can.
    pub(crate) fn set_startable(&self, startable: bool) {
        if self.startable.swap(startable, Ordering::Relaxed) && !startable {
            self.published.notify_waiters();
        }
    }

    /// The proxy's drain is over: held requests get their 503 now, which a closed connection
    /// would otherwise replace, and no more are held.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.published.notify_waiters();
    }

    /// Wakes the held requests; called after a non-empty set is stored.
    pub(crate) fn published(&self) {
        self.published.notify_waiters();
    }

    /// Waits until `snapshot` yields a non-empty set, for at most `cold_start_timeout`.
    /// Cancel-safe: a request dropped while held (its client left) leaves the queue.
    pub(crate) async fn hold(
        &self,
        snapshot: impl Fn() -> Arc<EndpointSet>,
    ) -> Result<Arc<EndpointSet>, OwnError> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued.load(Ordering::Relaxed) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(OwnError::QueueFull);
        }
        let _held = Held::new(self);
        self.demand.send_modify(|n| *n = n.wrapping_add(1));
        let deadline = tokio::time::Instant::now() + self.cold_start_timeout();
        self.wait_for(snapshot, |_| true, deadline).await
    }

    /// How long a request waits for a replica: `scale.cold_start_timeout`.
    pub(crate) fn cold_start_timeout(&self) -> Duration {
        Duration::from_nanos(self.cold_start_timeout_ns.load(Ordering::Relaxed))
    }

    /// Waits, up to `until`, for a non-empty set other than `seen`: a request that every
    /// endpoint it had refused (one that died under it, say) waits for the next replica,
    /// as a held request does. `ColdStartTimeout` at `until`; `NoEndpoints` when no replica
    /// can come any more. It is not counted in `queued`: it stays in flight meanwhile.
    pub(crate) async fn next_set(
        &self,
        snapshot: impl Fn() -> Arc<EndpointSet>,
        seen: &Arc<EndpointSet>,
        until: tokio::time::Instant,
    ) -> Result<(), OwnError> {
        let newer = |set: &Arc<EndpointSet>| !Arc::ptr_eq(set, seen);
        self.wait_for(snapshot, newer, until).await.map(|_| ())
    }

    /// Waits until `snapshot` yields a non-empty set that `wanted` takes, for at most
    /// `until`: `NoEndpoints` when no replica can come any more (or the proxy is done
    /// draining), `ColdStartTimeout` at `until`. Nothing polls: each set published wakes it.
    async fn wait_for(
        &self,
        snapshot: impl Fn() -> Arc<EndpointSet>,
        wanted: impl Fn(&Arc<EndpointSet>) -> bool,
        until: tokio::time::Instant,
    ) -> Result<Arc<EndpointSet>, OwnError> {
        loop {
            // Registered before looking at the set, so a set published between the look
            // and the wait still wakes this request.
            let published = self.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            let set = snapshot();
            if !set.endpoints.is_empty() && wanted(&set) {
                return Ok(set);
            }
            if !self.startable.load(Ordering::Relaxed) || self.closed.load(Ordering::Relaxed) {
                return Err(OwnError::NoEndpoints);
            }
            if tokio::time::timeout_at(until, published).await.is_err() {
                return Err(OwnError::ColdStartTimeout);
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One held request: its place in the queue, given back however the hold ends.
struct Held<'a>(&'a Activator);

impl<'a> Held<'a> {
    fn new(activator: &'a Activator) -> Held<'a> {
        activator.gauge.inc();
        Held(activator)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.gauge.dec();
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}
