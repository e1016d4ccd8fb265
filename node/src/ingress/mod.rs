//! The node's ingress controller: every agent serves the Ingresses of Skiff's classes (IngressClasses
//! whose controller is `skiff.dev/ingress`, `skiff` the default) on its HTTP and HTTPS ports, as k3s's
//! Traefik does behind ServiceLB, so whichever node a client reaches answers.
//!
//! A request is routed by host and path over all those Ingresses at once ([`routes::RouteTable`]); its
//! backend Service port resolves to ready endpoints from the service proxy's caches ([`routes::endpoints`])
//! and it is forwarded over the pod network ([`forward`]). Unknown hosts and paths get 404, a backend
//! without ready endpoints 503, endpoints that all refuse the connection 502. HTTPS picks its certificate
//! by SNI from the TLS Secrets the Ingresses name ([`tls`]).
//!
//! One loop watches Ingresses and IngressClasses (kube-runtime reflectors) and, by name, each TLS Secret
//! an Ingress names (all a node may read of Secrets: the Node authorizer relates those Secrets to every
//! node), and after each burst of events swaps in a new route table and certificate table; requests read
//! whichever is current. Where the endpoint chosen is a container on this node whose runtime declares that
//! it takes requests in-process ([`skiff_shim::Container::http`], a wasi:http guest), the request is handed
//! to it inside the agent, without a socket.

mod activate;
mod forward;
mod routes;
mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use rustls::sign::CertifiedKey;
use skiff_api::ingress::{SKIFF_CONTROLLER, served_by};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::AgentMetrics;
use crate::proxy::SharedCaches;
use crate::running::Running;
use routes::RouteTable;
use tls::{Certificates, Resolver, SecretKey};

/// The agent's ingress ports (`--ingress-http-port`, `--ingress-https-port`); 0 turns one off.
#[derive(Clone, Copy, Debug)]
pub struct IngressConfig {
    pub http_port: u16,
    pub https_port: u16,
}

/// Connections each listener holds at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16_384;
/// How long a client may take for its TLS handshake, as the API server's and the kubelet endpoint's.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers (and an idle keep-alive connection may wait for
/// its next request): ingress-nginx's client_header_timeout is 60 s, Traefik's readTimeout 60 s.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long requests in flight may take to finish once the agent stops, as the API server's drain.
const DRAIN: Duration = Duration::from_secs(10);

/// What requests read: swapped whole when the Ingresses, their classes or Secrets change.
struct Shared {
    routes: RwLock<Arc<RouteTable>>,
    certificates: Arc<Resolver>,
    caches: SharedCaches,
    client: forward::Client,
    /// Containers running here, some of which take their requests in-process.
    running: Arc<Running>,
    /// Holds requests for Services scaled to zero while it wakes them.
    activator: activate::Activator,
    /// Where forwarded requests are counted, by endpoint, for the pods' request rates.
    metrics: Arc<AgentMetrics>,
    /// Round-robin over a backend's endpoints.
    next: AtomicUsize,
}

/// What the ingress works with beyond its configuration: the node's name, its caches of Services and
/// endpoints, its running containers and its instruments.
pub struct Node {
    pub name: String,
    pub caches: SharedCaches,
    pub running: Arc<Running>,
    pub metrics: Arc<AgentMetrics>,
}

/// Serves Ingresses on this node until `shutdown`; requests for an endpoint among the `running` containers
/// that take requests in-process are handed to them there.
pub async fn run(client: Client, config: IngressConfig, node: Node, shutdown: CancellationToken) {
    if config.http_port == 0 && config.https_port == 0 {
        return;
    }
    let span = tracing::info_span!("ingress", http = config.http_port, https = config.https_port);
    serve(client, config, node, shutdown).instrument(span).await;
}

async fn serve(client: Client, config: IngressConfig, node: Node, shutdown: CancellationToken) {
    let Node { name, caches, running, metrics } = node;
    let fallback = match tls::default_certificate() {
        Ok(certified) => Arc::new(certified),
        Err(e) => return tracing::error!(error = %e, "no ingress on this node"),
    };
    let shared = Arc::new(Shared {
        routes: RwLock::new(Arc::default()),
        certificates: Arc::new(Resolver { current: RwLock::new(Arc::default()), fallback }),
        caches,
        client: forward::client(),
        running,
        activator: activate::Activator::new(client.clone(), name, metrics.clone()),
        metrics,
        next: AtomicUsize::new(0),
    });
    let http = listen(config.http_port, shared.clone(), None, shutdown.clone());
    let https = async {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|builder| builder.with_no_client_auth().with_cert_resolver(shared.certificates.clone()));
        match tls {
            Ok(mut tls) => {
                tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                let acceptor = TlsAcceptor::from(Arc::new(tls));
                listen(config.https_port, shared.clone(), Some(acceptor), shutdown.clone()).await;
            }
            Err(e) => tracing::error!(error = %e, "no HTTPS ingress"),
        }
    };
    tokio::join!(http, https, follow(client, shared.clone(), shutdown.clone()));
    tracing::info!("ingress stopped");
}

/// Accepts on `port` of every address of the node (as Traefik's host ports do), serving each connection,
/// through `tls` when given, until `shutdown`; then lets requests in flight finish for up to [`DRAIN`].
async fn listen(port: u16, shared: Arc<Shared>, tls: Option<TlsAcceptor>, shutdown: CancellationToken) {
    if port == 0 {
        return;
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        // The rest of the agent runs on: a node's pods matter more than its ingress port.
        Err(e) => return tracing::error!(%address, error = %e, "cannot listen for ingress {scheme}"),
    };
    tracing::info!(%address, scheme, "serving ingress");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "ingress accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (shared, tls, watcher) = (shared.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, request, peer, scheme).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let served = match tls {
                None => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(tcp), service)).boxed(),
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "ingress TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "ingress TLS handshake timed out"),
                    };
                    watcher
                        .watch(builder.serve_connection_with_upgrades(TokioIo::new(tls), service).into_owned())
                        .boxed()
                }
            };
            if let Err(e) = served.await {
                tracing::debug!(%peer, error = %e, "ingress connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::info!(scheme, "ingress requests still in flight after the drain, cut");
    }
}

/// Responses from backends, from in-process servers and the ingress's own.
type Body = skiff_shim::HttpBody;

fn text(status: StatusCode, message: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(message.as_bytes())).map_err(|e| match e {}).boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// One request: routed, resolved to endpoints, forwarded.
async fn handle(
    shared: &Shared,
    mut request: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
) -> Response<Body> {
    // HTTP/1.1 names the host in its Host header, HTTP/2 in the URI's authority.
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_default();
    let routes = shared.routes.read().unwrap_or_else(PoisonError::into_inner).clone();
    let Some(backend) = routes.route(&host, request.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    let read = || routes::endpoints(&shared.caches.read().unwrap_or_else(PoisonError::into_inner), backend);
    let mut endpoints = read();
    if endpoints.is_empty() {
        let wakes = {
            let caches = shared.caches.read().unwrap_or_else(PoisonError::into_inner);
            caches.service(&backend.service).and_then(|s| s.scales_from_zero.clone())
        };
        let Some(deployment) = wakes else {
            tracing::debug!(host, service = %backend.service, "no ready endpoint");
            return text(StatusCode::SERVICE_UNAVAILABLE, "no available server\n");
        };
        let what = format!("a request for {host}{}", request.uri().path());
        endpoints = match shared.activator.hold(&shared.caches, &backend.service, &deployment, &what, read).await {
            Ok(endpoints) => endpoints,
            Err(unavailable) => {
                tracing::debug!(host, service = %backend.service, ?unavailable, "held request not served");
                let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "no available server\n");
                response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                return response;
            }
        };
    }
    let first = shared.next.fetch_add(1, Ordering::Relaxed);
    let uri = request.uri().clone();
    let upgrade = forward::upgrade_of(request.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    forward::prepare(request.headers_mut(), &uri, peer.ip(), scheme);
    // Wasm first: a guest on this node that serves its HTTP inside the agent gets the request without a
    // connection (not a protocol switch, which wasi:http cannot take).
    let chosen = endpoints[first % endpoints.len()];
    // Counted for the endpoint chosen first (a refused connection moves the request to the next one).
    shared.metrics.forwarded.count(*chosen.ip());
    if let Some(local) =
        upgrade.is_none().then(|| shared.running.http_at((*chosen.ip()).into(), chosen.port())).flatten()
    {
        return local.serve(request, peer).await;
    }
    if let Some(protocol) = upgrade {
        forward::keep_upgrade(request.headers_mut(), protocol);
    }
    match forward::send(&shared.client, request, &endpoints, first).await {
        Ok(mut response) => {
            let switched = (response.status() == StatusCode::SWITCHING_PROTOCOLS)
                .then(|| forward::upgrade_of(response.headers()))
                .flatten();
            if let (Some(_), Some(client_upgrade)) = (&switched, client_upgrade) {
                forward::tunnel(client_upgrade, hyper::upgrade::on(&mut response));
            }
            let (mut parts, body) = response.into_parts();
            forward::prepare_response(&mut parts.headers);
            if let Some(protocol) = switched {
                forward::keep_upgrade(&mut parts.headers, protocol);
            }
            Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
        }
        Err(e) => {
            tracing::debug!(host, service = %backend.service, error = %e, "forwarding failed");
            text(StatusCode::BAD_GATEWAY, "bad gateway\n")
        }
    }
}

/// A change that calls for new tables.
enum Event {
    Listed(bool),
    Secret(SecretKey, Option<Arc<CertifiedKey>>),
}

/// Whether a watch event ends a (re)list.
fn listed<K>(event: Result<watcher::Event<K>, watcher::Error>) -> Event {
    match event {
        Ok(watcher::Event::InitDone) => Event::Listed(true),
        Ok(_) => Event::Listed(false),
        Err(e) => {
            tracing::warn!(error = %e, "ingress watch failed; retrying");
            Event::Listed(false)
        }
    }
}

/// Follows Ingresses, IngressClasses and the TLS Secrets they name, swapping in new tables after each
/// burst of changes, until `shutdown`.
async fn follow(client: Client, shared: Arc<Shared>, shutdown: CancellationToken) {
    let (ingresses, ingress_writer) = reflector::store::<Ingress>();
    let (classes, class_writer) = reflector::store::<IngressClass>();
    let config = watcher::Config::default();
    let ingress_events = watcher(Api::<Ingress>::all(client.clone()), config.clone()).default_backoff().modify(|i| {
        i.metadata.managed_fields = None;
    });
    let class_events = watcher(Api::<IngressClass>::all(client.clone()), config).default_backoff();
    let (secret_sender, secret_updates) = mpsc::unbounded_channel();
    let mut events = futures::stream::select_all([
        reflector::reflector(ingress_writer, ingress_events).map(|e| (0, listed(e))).boxed(),
        reflector::reflector(class_writer, class_events).map(|e| (1, listed(e))).boxed(),
        tokio_stream::wrappers::UnboundedReceiverStream::new(secret_updates).map(|e| (2, e)).boxed(),
    ]);
    let mut lists = [false; 2];
    let mut secrets: HashMap<SecretKey, Arc<CertifiedKey>> = HashMap::new();
    let mut watches: HashMap<SecretKey, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(event) = events.next() => batch.push(event),
        }
        while let Some(Some(event)) = events.next().now_or_never() {
            batch.push(event);
        }
        for (source, event) in batch {
            match event {
                Event::Listed(true) => lists[source] = true,
                Event::Listed(false) => {}
                Event::Secret(key, Some(certified)) => {
                    secrets.insert(key, certified);
                }
                Event::Secret(key, None) => {
                    secrets.remove(&key);
                }
            }
        }
        // Until both have listed, a half-known cluster would route some hosts and refuse others.
        if !lists.iter().all(|listed| *listed) {
            continue;
        }
        let ours = served(&ingresses, &classes);
        let wanted = Certificates::wanted(ours.iter().map(Arc::as_ref));
        watches.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
                secrets.remove(key);
            }
            keep
        });
        for key in wanted {
            watches
                .entry(key.clone())
                .or_insert_with(|| tokio::spawn(watch_secret(client.clone(), key, secret_sender.clone())));
        }
        let table = RouteTable::build(ours.iter().map(Arc::as_ref));
        let certificates = Certificates::build(ours.iter().map(Arc::as_ref), &secrets);
        tracing::debug!(ingresses = ours.len(), secrets = secrets.len(), "ingress routes updated");
        *shared.routes.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        *shared.certificates.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certificates);
    }
    for task in watches.into_values() {
        task.abort();
    }
}

/// The Ingresses this node serves, oldest first (then by namespace and name), the order in which they
/// claim hosts and paths.
fn served(ingresses: &Store<Ingress>, classes: &Store<IngressClass>) -> Vec<Arc<Ingress>> {
    let classes: Vec<IngressClass> = classes.state().iter().map(|class| (**class).clone()).collect();
    let mut ours: Vec<Arc<Ingress>> =
        ingresses.state().into_iter().filter(|ingress| served_by(ingress, &classes, SKIFF_CONTROLLER)).collect();
    ours.sort_by(|a, b| {
        let key = |i: &Ingress| {
            (i.metadata.creation_timestamp.as_ref().map(|t| t.0), i.metadata.namespace.clone(), i.metadata.name.clone())
        };
        key(a).cmp(&key(b))
    });
    ours
}

/// Follows one TLS Secret by name (the node may read no other way), sending its certificate as it
/// changes, or None when it goes or stops being a valid certificate.
async fn watch_secret(client: Client, key: SecretKey, updates: mpsc::UnboundedSender<Event>) {
    let (namespace, name) = key.clone();
    let span = tracing::debug_span!("ingress_secret", namespace, name);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(Api::<Secret>::namespaced(client, &namespace), config).default_backoff().boxed();
    async move {
        while let Some(event) = events.next().await {
            let certified = match event {
                Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                    match tls::certified_key(&secret) {
                        Ok(certified) => Some(Arc::new(certified)),
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS secret not usable");
                            None
                        }
                    }
                }
                Ok(watcher::Event::Delete(_)) => None,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "TLS secret watch failed; retrying");
                    continue;
                }
            };
            if updates.send(Event::Secret(key.clone(), certified)).is_err() {
                return;
            }
        }
    }
    .instrument(span)
    .await;
}

#[cfg(test)]
mod tests {
    use http_body_util::{Empty, Full};
    use hyper::service::service_fn;
    use hyper_util::client::legacy::Client as HyperClient;
    use hyper_util::client::legacy::connect::HttpConnector;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::proxy::Caches;

    /// A backend on a loopback port: it echoes the path and forwarding headers, and for a request to switch
    /// to `echo` it switches and sends back the first five bytes it gets.
    async fn backend() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let service = service_fn(|mut request: Request<Incoming>| async move {
                    let Some(protocol) = forward::upgrade_of(request.headers()) else {
                        let header = |name: &str| request.headers()[name].to_str().unwrap().to_string();
                        let text =
                            format!("{} {} {}", request.uri().path(), header("x-forwarded-proto"), header("host"));
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)).boxed()));
                    };
                    let switched = hyper::upgrade::on(&mut request);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(switched.await.unwrap());
                        let mut bytes = [0; 5];
                        io.read_exact(&mut bytes).await.unwrap();
                        io.write_all(&bytes).await.unwrap();
                    });
                    let mut response = Response::new(Empty::new().boxed());
                    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    forward::keep_upgrade(response.headers_mut(), protocol);
                    Ok(response)
                });
                let connection =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
                tokio::spawn(connection.with_upgrades());
            }
        });
        port
    }

    /// A client of no server, for the parts that would call the API.
    fn nowhere() -> kube::Client {
        kube::Client::try_from(kube::Config::new("https://127.0.0.1:1".parse().unwrap())).unwrap()
    }

    /// The ingress's request handling in front of `backend_port`, as Service `web` (port 80) of an Ingress
    /// for shop.example.com; down.example.com goes to a Service with no endpoints, and sleepy.example.com to
    /// one with none that a Deployment scaled to zero would serve. Returns its address and its caches.
    async fn front(backend_port: u16, running: Arc<Running>) -> (SocketAddr, SharedCaches) {
        let mut caches = Caches::default();
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.43.0.5", "ports": [{"name": "http", "port": 80}]},
        }))
        .unwrap();
        caches.insert_service(service);
        let sleepy: Service = serde_json::from_value(json!({
            "metadata": {"name": "sleepy", "namespace": "shop", "annotations": {"skiff.dev/scale-from-zero": "sleepy"}},
            "spec": {"clusterIP": "10.43.0.6", "ports": [{"name": "http", "port": 80}]},
        }))
        .unwrap();
        caches.insert_service(sleepy);
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-a", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": backend_port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        }))
        .unwrap();
        caches.insert_slice(slice);
        let path = |service: &str| json!({"path": "/", "pathType": "Prefix", "backend": {"service": {"name": service, "port": {"number": 80}}}});
        let ingress: Ingress =
            serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {"rules": [
                {"host": "shop.example.com", "http": {"paths": [path("web")]}},
                {"host": "down.example.com", "http": {"paths": [path("missing")]}},
                {"host": "sleepy.example.com", "http": {"paths": [path("sleepy")]}},
            ]}}))
            .unwrap();
        let caches = Arc::new(RwLock::new(caches));
        let metrics = Arc::new(AgentMetrics::new(running.clone()));
        let shared = Arc::new(Shared {
            routes: RwLock::new(Arc::new(RouteTable::build([&ingress]))),
            certificates: Arc::new(Resolver {
                current: RwLock::default(),
                fallback: Arc::new(tls::default_certificate().unwrap()),
            }),
            caches: caches.clone(),
            client: forward::client(),
            activator: activate::Activator::new(nowhere(), "node-a".into(), metrics.clone()),
            metrics,
            running,
            next: AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let shared = shared.clone();
                let service = service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, request, peer, "http").await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                tokio::spawn(builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).into_owned());
            }
        });
        (address, caches)
    }

    /// A request for a Service scaled to zero waits, and is forwarded once an endpoint shows up.
    #[tokio::test]
    async fn a_request_for_a_service_at_zero_is_held_until_it_has_an_endpoint() {
        let backend_port = backend().await;
        let (front, caches) = front(backend_port, Arc::default()).await;
        let client: HyperClient<HttpConnector, Empty<Bytes>> =
            HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
        let request = Request::get(format!("http://{front}/cart")).header("host", "sleepy.example.com");
        let held = tokio::spawn(client.request(request.body(Empty::new()).unwrap()));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "the request is held, not refused");
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "sleepy-a", "namespace": "shop", "labels": {"kubernetes.io/service-name": "sleepy"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": backend_port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        }))
        .unwrap();
        {
            let mut caches = caches.write().unwrap();
            caches.insert_slice(slice);
            caches.applied();
        }
        let response = tokio::time::timeout(std::time::Duration::from_secs(5), held).await.unwrap().unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_are_routed_refused_and_switched_through() {
        let (front, _) = front(backend().await, Arc::default()).await;
        let client: HyperClient<HttpConnector, Empty<Bytes>> =
            HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
        let get = |host: &'static str, path: &str| {
            let request = Request::get(format!("http://{front}{path}")).header("host", host).body(Empty::new());
            let client = client.clone();
            async move {
                let response = client.request(request.unwrap()).await.unwrap();
                let status = response.status();
                (status, String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
            }
        };
        assert_eq!(get("shop.example.com", "/cart").await, (StatusCode::OK, "/cart http shop.example.com".into()));
        assert_eq!(get("nowhere.example.com", "/").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get("down.example.com", "/").await.0, StatusCode::SERVICE_UNAVAILABLE);

        let request = Request::get(format!("http://{front}/socket"))
            .header("host", "shop.example.com")
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Empty::new())
            .unwrap();
        let mut response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()["upgrade"], "echo");
        let mut io = TokioIo::new(hyper::upgrade::on(&mut response).await.unwrap());
        io.write_all(b"hello").await.unwrap();
        let mut echoed = [0; 5];
        io.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"hello");
    }

    /// A container whose runtime takes its requests in-process, as a wasi:http guest's does.
    struct InProcess(u16);

    #[async_trait::async_trait]
    impl skiff_shim::HttpService for InProcess {
        fn port(&self) -> u16 {
            self.0
        }

        async fn serve(&self, request: Request<Incoming>, client: SocketAddr) -> Response<skiff_shim::HttpBody> {
            let text = format!("in-process {} from {}", request.uri().path(), client.ip());
            Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed_unsync())
        }
    }

    #[tokio::test]
    async fn a_local_guest_that_serves_in_process_gets_the_request_without_a_connection() {
        // Nothing listens on the endpoint's port: only the in-process hand-over can answer.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let running = Arc::new(Running::default());
        running.started(crate::running::RunningContainer {
            pod: crate::pods::PodRef { namespace: "shop".into(), name: "web".into(), uid: "uid-1".into() },
            name: "app".into(),
            id: "a-0".into(),
            runtime: "wasm",
            exec: None,
            meter: None,
            http: Some(Arc::new(InProcess(port))),
            address: "127.0.0.1".parse().unwrap(),
            started_at: std::time::SystemTime::UNIX_EPOCH,
        });
        let (front, _) = front(port, running).await;
        let client: HyperClient<HttpConnector, Empty<Bytes>> =
            HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
        let request =
            Request::get(format!("http://{front}/cart")).header("host", "shop.example.com").body(Empty::new());
        let response = client.request(request.unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "in-process /cart from 127.0.0.1");
    }
}
