//! One request through the proxy: route → service → balancer → pooled upstream connection
//! → response streamed back, with retries (see [`crate::retry`]), the request timeout,
//! header rewriting, Upgrade pass-through and the bookkeeping for metrics and load.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use shoal_config::HashOn;

use crate::balance::consistent_hash::hash_bytes;
use crate::balance::{refresh, Tried};
use crate::body::{ClientStalled, RequestBody, ResponseBody};
use crate::client::{self, Connection, UpstreamBody};
use crate::endpoint::{EndpointSet, InFlight};
use crate::errors::OwnError;
use crate::headers::{self, Message, X_REQUEST_ID, X_SHOAL_ERROR};
use crate::listener::ListenerState;
use crate::metrics::RequestMetrics;
use crate::retry::MAX_HELD_BODY;
use crate::service::{ServiceHandle, ServiceInFlight, ServiceKind, Settings};

/// How many times a request handed back unsent (its pooled connection had just
/// closed) is resent before the endpoint counts as failing.
const MAX_UNSENT_RESENDS: u32 = 3;

/// What a downstream connection knows about itself.
pub(crate) struct Downstream {
    pub(crate) listener: Arc<ListenerState>,
    pub(crate) client: SocketAddr,
    /// The client's address as `X-Forwarded-For` gives it ([`headers::address_value`]).
    pub(crate) address: HeaderValue,
}

impl Downstream {
    pub(crate) fn new(listener: Arc<ListenerState>, client: SocketAddr) -> Downstream {
        Downstream {
            listener,
            client,
            address: headers::address_value(client.ip()),
        }
    }
}

/// The bookkeeping finished when a response body is done (or dropped): duration metrics,
/// latency for the load window, the service's and endpoint's in-flight counts, and the
/// upstream connection back to its pool after a clean end.
pub(crate) struct Completion {
    start: Instant,
    /// When it went in flight on its service: `start`, or its release from the hold queue.
    /// The autoscaler's busy time counts from here, as its held time is counted as queued.
    in_flight_since: Instant,
    metrics: Arc<RequestMetrics>,
    service: Option<ServiceInFlight>,
    attempt: Option<Attempt>,
}

impl Completion {
    /// A request answered before it reached a service: counted with an empty `service`.
    fn unrouted(listener: &ListenerState, start: Instant) -> Completion {
        Completion {
            start,
            in_flight_since: start,
            metrics: listener.unrouted.clone(),
            service: None,
            attempt: None,
        }
    }
}

/// The attempt that produced the response, counted in flight on its endpoint until the
/// response body has been read.
pub(crate) struct Attempt {
    in_flight: InFlight,
}

impl Completion {
    /// `reusable` is the upstream connection when the response was read to its end and
    /// the connection stays open.
    pub(crate) fn finish(self, reusable: Option<Connection>) {
        // One clock read for all the bookkeeping of the end.
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        self.metrics.observe(elapsed.as_secs_f64());
        if let Some(service) = &self.service {
            let in_flight = now.saturating_duration_since(self.in_flight_since);
            service
                .service()
                .window
                .record_latency(now, elapsed, in_flight);
        }
        if let (Some(attempt), Some(connection)) = (self.attempt, reusable) {
            attempt.in_flight.upstream().pool.checkin(connection, now);
        }
    }
}

/// Whether a request asks for a tunnel (an Upgrade, or CONNECT), and who splices its client
/// side once the upstream's answer opens it (a 101, or a 2xx to CONNECT). That answer
/// carries the upstream's side (an [`Opened`] in its extensions) to the server.
pub(crate) enum Tunnel {
    No,
    /// An HTTP/1.1 Upgrade or CONNECT: [`crate::http1`] splices the client's connection
    /// once the response's head is written.
    Http1,
    /// An HTTP/2 CONNECT stream: [`crate::http2`] splices the stream.
    Http2,
}

/// The upstream's side of a tunnel it opened, for the server to splice. The tunnel counts
/// in flight on its service and its endpoint for as long as this lives, as a request does
/// until its response ends: an open WebSocket keeps its service from idling to zero, and a
/// replica that drains waits for it (up to `drain_timeout`). Its answer is counted, and
/// timed, as the request's.
#[derive(Clone)]
pub(crate) struct Opened {
    pub(crate) upstream: OnUpgrade,
    /// Shared by the clones that `http::Extensions` requires; the count ends with the last.
    pub(crate) held: Arc<(ServiceInFlight, InFlight)>,
}

/// Answers one request from a client: its own response or the upstream's.
pub(crate) async fn respond(
    downstream: &Downstream,
    parts: &mut Parts,
    body: RequestBody,
    tunnel: Tunnel,
) -> Response<ResponseBody> {
    let upgrade = !matches!(tunnel, Tunnel::No);
    let start = Instant::now();
    // The head as the client sent it: the limit is on the client, not on what shoal adds.
    let target_len = parts.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let head_size = headers::head_size(&parts.method, &parts.headers, target_len);
    let (request_id, made_request_id) = headers::request_id(&mut parts.headers);
    let listener = &downstream.listener;

    let host = crate::route::request_host(&parts.uri, &parts.headers);
    // Read once: a reload swaps the routes for the requests after this one.
    let routes = listener.routes.load();
    // An HTTP/1 head was held to the listener's limit byte by byte as it was read: the
    // estimate below decides only for a service whose own limit is lower, and for HTTP/2.
    let listener_limit = routes.connection.max_header_bytes;
    let Some(route) = routes.find(host, parts.uri.path(), &parts.headers) else {
        return own_response(
            OwnError::NoRoute,
            Completion::unrouted(listener, start),
            request_id,
        );
    };
    let service = route.service.clone();
    let settings = service.settings();
    service.window.record_request(start);
    let mut completion = Completion {
        start,
        in_flight_since: start,
        metrics: route.metrics.clone(),
        service: Some(service.enter()),
        attempt: None,
    };
    drop(routes);

    let connect = parts.method == Method::CONNECT;
    let limit = settings.limits.max_request_header_bytes;
    let read_within = parts.version != Version::HTTP_2 && limit >= listener_limit;
    if head_size > limit && !read_within {
        return own_response(OwnError::HeaderTooLarge, completion, request_id);
    }

    let added = prepare_request(parts, downstream, upgrade, made_request_id);

    let mut set = service.snapshot();
    let mut sending = start;
    if set.endpoints.is_empty() {
        set = match hold(&service, &mut completion).await {
            Ok(set) => set,
            Err(error) => return own_response(error, completion, request_id),
        };
        // The request timeout is about the upstream: it starts once there is one.
        sending = Instant::now();
    }
    let deadline = tokio::time::Instant::from_std(sending) + settings.timeouts.request;
    let mut upstreams = Upstreams {
        key: settings
            .balancer
            .hash_on()
            .and_then(|on| hash_key(on, parts, &added, downstream.client.ip())),
        set,
        awaiting: None,
    };
    let forwarded = tokio::time::timeout_at(
        deadline,
        forward(
            &service,
            &settings,
            &mut upstreams,
            parts,
            &added,
            body,
            upgrade,
        ),
    )
    .await;
    let (response, attempt) = match forwarded {
        Ok(Ok(forwarded)) => forwarded,
        Ok(Err(error)) => return own_response(error, completion, request_id),
        Err(_elapsed) => {
            if let Some((index, sent)) = upstreams.awaiting {
                // No answer within the request timeout: a failure to outlier detection, as
                // Envoy counts the 504 it gives on an upstream's behalf and HAProxy's
                // `observe layer7` a timeout, so that a hung endpoint that still accepts
                // connections leaves the balancer.
                let set = &upstreams.set;
                if let Some(upstream) = set.endpoints.get(index) {
                    upstream.ewma().observe(sent.elapsed());
                }
                settings.outlier.record(service.name(), set, index, false);
            }
            return own_response(OwnError::UpstreamTimeout, completion, request_id);
        }
    };

    let (mut head, body) = response.into_parts();
    // A 2xx to CONNECT opens a tunnel as a 101 does (RFC 9110 §9.3.6).
    let switching =
        head.status == StatusCode::SWITCHING_PROTOCOLS || connect && head.status.is_success();
    // HTTP/2 has no Upgrade and no Connection header.
    // Only a 101 names its protocol in Upgrade; a CONNECT's 2xx has none to keep.
    let keep_upgrade =
        matches!(tunnel, Tunnel::Http1) && head.status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        // What follows is the tunnel, not a body: a length or coding the upstream sent with
        // it would have the client wait for a body or stop the tunnel short (RFC 9110
        // §9.3.6: a server must not send them, a client must ignore them).
        head.headers.remove(header::CONTENT_LENGTH);
        head.headers.remove(header::TRANSFER_ENCODING);
        // The upstream's side goes to the server in the response's extensions.
        let Some(upstream) = head
            .extensions
            .remove::<OnUpgrade>()
            .filter(|_| !matches!(tunnel, Tunnel::No))
        else {
            return own_response(OwnError::UpstreamReset, completion, request_id);
        };
        let held = (service.enter(), attempt.in_flight.upstream().begin());
        head.extensions.insert(Opened {
            upstream,
            held: Arc::new(held),
        });
        if matches!(tunnel, Tunnel::Http2) && head.status == StatusCode::SWITCHING_PROTOCOLS {
            // An extended CONNECT's answer (RFC 8441 §5): a 200, without the HTTP/1.1
            // handshake; counted as what the client gets.
            head.status = StatusCode::OK;
            head.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        }
    }
    headers::strip_hop_by_hop(&mut head.headers, Message::Response, keep_upgrade);
    head.headers.entry(&X_REQUEST_ID).or_insert(request_id);
    completion.metrics.count(head.status.as_u16());
    completion.attempt = Some(attempt);
    Response::from_parts(
        head,
        ResponseBody::upstream(body, settings.timeouts.idle, completion),
    )
}

/// An authority as a Host value: without the `user:password@` an absolute-form target may
/// carry (a Host has none, RFC 9112 §3.2), which must not reach the upstream either.
fn host_of(authority: &http::uri::Authority) -> Option<HeaderValue> {
    let text = authority.as_str();
    let host_and_port = text.rsplit_once('@').map_or(text, |(_, after)| after);
    HeaderValue::from_str(host_and_port).ok()
}

/// Rewrites the request head for the upstream: hop-by-hop headers out, origin-form target,
/// HTTP/1.1 (upstreams are spoken to in HTTP/1.1 whatever the client used). Returns the
/// fields this hop adds ([`headers::Added`]): `X-Forwarded-*`, the `x-request-id` shoal
/// made, and a Host from the target's authority when it has one (HTTP/2 clients send
/// `:authority` instead of Host; absolute-form targets carry one), which replaces the
/// client's; a request with neither (HTTP/1.0 allows that) gets the listener's address.
fn prepare_request(
    parts: &mut Parts,
    downstream: &Downstream,
    upgrade: bool,
    made_request_id: Option<HeaderValue>,
) -> headers::Added {
    // The target's authority, when it has one, wins over a Host header: a proxy replaces
    // Host with an absolute-form target's (RFC 9112 §3.2.2), and HTTP/2's `:authority` is
    // the same thing.
    let target_host = parts.uri.authority().and_then(host_of);
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    // A CONNECT asks for its tunnel by its method: `Connection: upgrade` means nothing there.
    let upgrade = upgrade && parts.method != Method::CONNECT;
    headers::strip_hop_by_hop(&mut parts.headers, Message::Request, upgrade);
    let listener = &downstream.listener;
    let added = headers::Added::new(
        &mut parts.headers,
        &downstream.address,
        listener.scheme,
        target_host,
        &listener.address,
        made_request_id,
    );
    // A CONNECT's target is the authority the tunnel goes to.
    if parts.method != Method::CONNECT
        && (parts.uri.scheme().is_some() || parts.uri.authority().is_some())
    {
        // The target's parts are already parsed (HTTP/2 requests always carry scheme and
        // authority): only the path and query are kept, without parsing them again.
        let mut origin = http::uri::Parts::default();
        origin.path_and_query = Some(match parts.uri.path_and_query() {
            Some(target) if path_fits(&parts.method, &parts.uri) => target.clone(),
            // An empty path before a query (`http://host?x=1`) is `/` in origin form (RFC
            // 9112 §3.2.1).
            Some(target) => PathAndQuery::try_from(format!("/{}", target.as_str()))
                .unwrap_or_else(|_| PathAndQuery::from_static("/")),
            None => PathAndQuery::from_static("/"),
        });
        parts.uri = Uri::from_parts(origin).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
    added
}

/// HTTP/2 may split cookies over several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Whether a request's target is in origin form as its method may use it: a path, or `*`
/// for OPTIONS (RFC 9112 §3.2.1, §3.2.4; RFC 9113 §8.3.1 for HTTP/2's `:path`).
pub(crate) fn path_fits(method: &Method, uri: &Uri) -> bool {
    let target = uri.path_and_query().map_or("", |p| p.as_str());
    target.starts_with('/') || *method == Method::OPTIONS && target == "*"
}

/// For a request that found no endpoint: a container service holds it until a replica is
/// ready (see [`crate::activator`]); any other service answers `no_endpoints` at once.
async fn hold(
    service: &Arc<ServiceHandle>,
    completion: &mut Completion,
) -> Result<Arc<EndpointSet>, OwnError> {
    if service.kind() != ServiceKind::Container {
        return Err(OwnError::NoEndpoints);
    }
    // Held requests count in `queued`, not in flight, until released, and then, answered
    // or refused, in the service's latency like any other.
    completion.service = None;
    let held = service.activator.hold(|| service.snapshot()).await;
    completion.service = Some(service.enter());
    completion.in_flight_since = Instant::now();
    held
}

/// For a request of a container service that has no endpoint left to try (each refused
/// its connection, the one it was on died under it, say): moves it to the service's newest
/// set and, when that has none either, waits for the next set to be published (a replica
/// restarted or added), as a request at zero does, for up to `cold_start_timeout` from the
/// first wait, rather than answer a 502 that the requests right after it, held, would not
/// get. While no set comes, the replicas still listed are tried again after a pause that
/// doubles (see [`ReplicaWait`]). True when there is an endpoint to try in `set` now; false
/// when the service is not one, connects are not retried, or none came: then the request
/// gives up as before.
/// Boxed where it is awaited: a wait this rare must not grow every request's future.
async fn next_replica(
    service: &ServiceHandle,
    settings: &Settings,
    key: Option<u64>,
    set: &mut Arc<EndpointSet>,
    tried: &mut [&mut Tried],
    wait: &mut Option<ReplicaWait>,
) -> bool {
    if service.kind() != ServiceKind::Container || !settings.retry.retries_connects() {
        return false;
    }
    refresh(service.snapshot(), set, tried);
    // `tried[0]` holds every endpoint this request used, `tried[1]` those that refused.
    if settings.balancer.pick(set, key, tried[0], true).is_some() {
        return true;
    }
    let now = tokio::time::Instant::now();
    let wait = wait.get_or_insert_with(|| ReplicaWait {
        until: now + service.activator.cold_start_timeout(),
        pause: ReplicaWait::FIRST_PAUSE,
    });
    let pause_until = wait.until.min(now + wait.pause);
    match service
        .activator
        .next_set(|| service.snapshot(), set, pause_until)
        .await
    {
        Ok(()) => {}
        Err(OwnError::ColdStartTimeout) if pause_until < wait.until => {
            // No replica came or left: those still listed as ready refused only a connect
            // (a SYN dropped from a full accept queue, say). Each is tried again, as Envoy's
            // and HAProxy's connect retries try a lone server again.
            for tried in tried.iter_mut() {
                tried.clear();
            }
            wait.pause = (wait.pause * 2).min(ReplicaWait::MAX_PAUSE);
        }
        Err(_) => return false,
    }
    refresh(service.snapshot(), set, tried);
    true
}

/// How a request that every listed replica refused waits for a replica (see
/// [`next_replica`]).
struct ReplicaWait {
    /// `cold_start_timeout` from the first wait.
    until: tokio::time::Instant,
    /// How long until the listed replicas are tried again.
    pause: Duration,
}

impl ReplicaWait {
    const FIRST_PAUSE: Duration = Duration::from_millis(25);
    /// About a connect timeout: a replica that is down costs a try a second until a health
    /// check or its exit takes it out of the set.
    const MAX_PAUSE: Duration = Duration::from_secs(1);
}

/// The endpoints a request is sent to and how one is picked, owned by [`respond`] so that
/// what [`forward`] was doing is still known when the request timeout drops it.
struct Upstreams {
    /// The consistent-hash key the balancer picks by, if it hashes.
    key: Option<u64>,
    /// A non-empty snapshot of the service's endpoints, refreshed by retries.
    set: Arc<EndpointSet>,
    /// The endpoint (index in `set`) whose answer is awaited, and since when.
    awaiting: Option<(usize, Instant)>,
}

/// Sends the request to the endpoints of `upstreams.set` until one answers acceptably or
/// the retry rules say stop.
async fn forward(
    service: &Arc<ServiceHandle>,
    settings: &Settings,
    upstreams: &mut Upstreams,
    parts: &mut Parts,
    added: &headers::Added,
    body: RequestBody,
    upgrade: bool,
) -> Result<(Response<UpstreamBody>, Attempt), OwnError> {
    let replay = !upgrade && settings.retry.may_replay(&parts.method);
    // A small body of known length is read whole first, as nginx buffers request bodies:
    // it can be sent again, and it goes through shoal's own client on a pooled connection.
    let body = match body {
        RequestBody::Stream(mut body) => {
            // A client gets as long between pieces of its body as for its head: one that
            // stops is answered 408 for it, not kept until the request timeout blames the
            // upstream.
            body.stall_after(settings.timeouts.header_read);
            if !upgrade && body.size_hint().exact().is_some_and(|n| n <= MAX_HELD_BODY) {
                match body.collect().await {
                    Ok(collected) => RequestBody::Buffered(collected.to_bytes()),
                    Err(error) => return Err(client_body_failed(&*error)),
                }
            } else {
                RequestBody::Stream(body)
            }
        }
        body => body,
    };
    // Only a request held whole can be sent again after the upstream has seen it; it stays
    // here while it is sent (see [`client::send`]).
    let resendable = replay && !matches!(body, RequestBody::Stream(_));
    // `None` once hyper's client took the request and sent it (see [`client::send`]).
    let mut body = Some(body);

    let mut tried = Tried::default();
    let mut unreachable = Tried::default();
    let mut retries = 0u32;
    let mut unsent_resends = 0u32;
    let mut last_error = OwnError::UpstreamUnreachable;
    let mut first = true;
    // How the request waits for a replica once every one it had refused it.
    let mut replica_wait = None;
    let Upstreams { key, set, awaiting } = upstreams;
    let key = *key;
    loop {
        if !first {
            refresh(service.snapshot(), set, &mut [&mut tried, &mut unreachable]);
        }
        // After a reset or a retried status, the same endpoint is better than none: it
        // may answer differently; an endpoint that refused the connection is not.
        let index = match settings.balancer.pick(set, key, &tried, !first) {
            Some(index) => index,
            None if last_error != OwnError::UpstreamUnreachable => {
                tried.clear();
                match settings.balancer.pick(set, key, &unreachable, true) {
                    Some(index) => index,
                    None => return Err(last_error),
                }
            }
            None => {
                let tried = &mut [&mut tried, &mut unreachable];
                let next = next_replica(service, settings, key, set, tried, &mut replica_wait);
                if !Box::pin(next).await {
                    return Err(last_error);
                }
                continue;
            }
        };
        if !first {
            service.metrics.retries.inc();
        }
        first = false;
        let upstream = &set.endpoints[index];
        let connection = match upstream.pool.checkout(&settings.timeouts).await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::debug!(service = service.name(), %error, "upstream connect failed");
                service.metrics.connect_errors.inc();
                settings.outlier.record(service.name(), set, index, false);
                // To p2c_ewma, an endpoint that refuses connections looks as slow as one
                // that takes the whole connect timeout, so new requests avoid it for a
                // while instead of each paying a failed connect first.
                upstream.ewma().observe(settings.timeouts.connect);
                tried.insert(index);
                unreachable.insert(index);
                last_error = OwnError::UpstreamUnreachable;
                // A request waiting for a replica stops trying when its wait ends.
                if replica_wait
                    .as_ref()
                    .is_some_and(|wait| tokio::time::Instant::now() >= wait.until)
                {
                    return Err(last_error);
                }
                if settings.retry.allows_connect_retry(retries) {
                    retries += 1;
                    continue;
                }
                // The retries are used up: only a request with no endpoint left to try
                // goes on, to wait for a next replica (the pick above finds none). One
                // already waiting goes on trying the listed replicas each round (see
                // [`next_replica`]), for as long as its wait lasts rather than `attempts`.
                if replica_wait.is_none() {
                    refresh(service.snapshot(), set, &mut [&mut tried, &mut unreachable]);
                    if settings.balancer.pick(set, key, &tried, true).is_some() {
                        return Err(last_error);
                    }
                }
                continue;
            }
        };
        if body.is_none() {
            return Err(last_error);
        }
        let in_flight = upstream.begin();
        let sent = Instant::now();
        *awaiting = Some((index, sent));
        let result =
            client::send(connection, &upstream.pool, parts, added, &mut body, upgrade).await;
        *awaiting = None;
        match result {
            Ok(response) => {
                let answered = Instant::now();
                upstream
                    .ewma()
                    .observe_at(answered.saturating_duration_since(sent), answered);
                let status = response.status().as_u16();
                settings
                    .outlier
                    .record(service.name(), set, index, status < 500);
                if resendable
                    && settings.retry.on_status(status)
                    && settings.retry.allows(retries, service.window.totals())
                {
                    retries += 1;
                    service.window.record_retry();
                    tried.insert(index);
                    last_error = OwnError::UpstreamReset;
                    continue;
                }
                return Ok((response, Attempt { in_flight }));
            }
            Err(failed) if failed.error.client_body().is_some() => {
                // A malformed, broken-off or stalled request body: the client's fault, so a
                // 400 or 408 (as nginx and HAProxy answer) and nothing held against the
                // upstream.
                tracing::debug!(service = service.name(), error = %failed.error, "client's request body failed");
                let body_error = failed.error.client_body();
                return Err(body_error.map_or(OwnError::BadRequest, client_body_failed));
            }
            Err(failed) => {
                if failed.unsent && unsent_resends < MAX_UNSENT_RESENDS {
                    unsent_resends += 1;
                    first = true;
                    continue;
                }
                tracing::debug!(service = service.name(), error = %failed.error, "upstream request failed");
                upstream.ewma().observe(settings.timeouts.connect);
                settings.outlier.record(service.name(), set, index, false);
                tried.insert(index);
                last_error = OwnError::UpstreamReset;
                if resendable
                    && settings.retry.on_reset()
                    && settings.retry.allows(retries, service.window.totals())
                {
                    retries += 1;
                    service.window.record_retry();
                    continue;
                }
                return Err(OwnError::UpstreamReset);
            }
        }
    }
}

/// shoal's answer to a client whose request body failed: 408 when it stalled, else 400.
fn client_body_failed(error: &(dyn std::error::Error + 'static)) -> OwnError {
    if error.is::<ClientStalled>() {
        OwnError::BodyTimeout
    } else {
        OwnError::BadRequest
    }
}

/// The consistent-hash key of a request, `None` when it lacks what is hashed.
/// A header is hashed as it goes upstream: the value this hop sets, if it sets one.
fn hash_key(on: &HashOn, parts: &Parts, added: &headers::Added, client: IpAddr) -> Option<u64> {
    match on {
        HashOn::ClientIp => Some(match client.to_canonical() {
            IpAddr::V4(ip) => hash_bytes(&ip.octets()),
            IpAddr::V6(ip) => hash_bytes(&ip.octets()),
        }),
        HashOn::Header(name) => added
            .get(name.as_str())
            .or_else(|| parts.headers.get(name.as_str()))
            .map(|v| hash_bytes(v.as_bytes())),
        HashOn::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name.as_str())
            .map(|(_, v)| hash_bytes(v.as_bytes())),
        HashOn::Path => Some(hash_bytes(parts.uri.path().as_bytes())),
    }
}

/// shoal's answer to a request refused before it is routed: one that names no valid host
/// (400), or whose body has a coding shoal does not decode (501).
pub(crate) fn refuse(
    downstream: &Downstream,
    headers: &mut HeaderMap,
    error: OwnError,
) -> Response<ResponseBody> {
    let (request_id, _) = headers::request_id(headers);
    let completion = Completion::unrouted(&downstream.listener, Instant::now());
    own_response(error, completion, request_id)
}

/// shoal's own answer, counted like any other.
pub(crate) fn own_response(
    error: OwnError,
    completion: Completion,
    request_id: HeaderValue,
) -> Response<ResponseBody> {
    completion.metrics.count(error.status().as_u16());
    let mut response = Response::new(ResponseBody::own(error.body(), Some(completion)));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(&X_SHOAL_ERROR, error.reason_header());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(&X_REQUEST_ID, request_id);
    if error.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
