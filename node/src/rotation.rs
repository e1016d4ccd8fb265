//! Keeping the node's certificates current while the agent runs, as client-go's certificate manager does for
//! the kubelet: each is renewed at a jittered 70–90% of its lifetime ([`deadline`]) with a new key, through a
//! CertificateSigningRequest made as the node (a node renewing its own client certificate is
//! `selfnodeclient`, which the controllers approve), written to disk atomically, and put to use without a
//! restart:
//!
//! - the client certificate through [`NodeClient`]: every request of every part of the agent goes through
//!   the kube Client of the current certificate, so from the swap on every new request presents the new one
//!   (on connections of its own: the old client's pooled connections are not reused); a request in flight,
//!   or a watch until it ends, finishes on the connection it has;
//! - the serving certificate through the kubelet port's certificate resolver
//!   ([`crate::server::ServingCertificate`]), which every new TLS handshake reads.
//!
//! Refused: when the API server answers 401 to a request made with the current client certificate (it
//! expired, or the server no longer takes it, as when the node's Node was deleted), the agent asks for a new
//! one with the join token, as a kubelet with a bootstrap kubeconfig does. [`NodeClient`] sees every answer,
//! so the Lease heartbeat (every 10 s) finds a refusal within its period with no probe of its own. A failed
//! attempt is retried after a back-off, never in a tight loop.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use kube::client::Body;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::AgentError;
use crate::connect::{Bootstrap, Issued, NodeCertificate, Validity};
use crate::server::ServingCertificate;

/// The wait after a first failed attempt, doubled after each further one (client-go's manager backs off
/// alike), up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(2);
/// The longest wait between attempts: a request left to an admin is looked at again this often.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// The longest sleep towards a deadline: tokio's clock stops while the machine is suspended and the wall
/// clock does not, so a deadline months away is looked at again this often.
const WAKE_AT_LEAST: Duration = Duration::from_secs(3600);

/// When (Unix seconds) to renew a certificate valid over `validity`: at 70–90% of its lifetime, `jitter`
/// (0 to 1) choosing where, as client-go's `nextRotationDeadline`, so that nodes started together do not
/// all ask at once.
pub(crate) fn deadline(validity: Validity, jitter: f64) -> i64 {
    let lifetime = (validity.not_after - validity.not_before) as f64;
    validity.not_before + (lifetime * (0.7 + 0.2 * jitter.clamp(0.0, 1.0))).round() as i64
}

/// How long to wait after the `failures`th failed attempt in a row.
fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The agent's client of the API server, whose certificate is replaced while it runs: [`NodeClient::client`]
/// routes every request through the kube Client of the certificate installed last, and notes a 401 answer
/// to it.
#[derive(Clone)]
pub struct NodeClient {
    shared: Arc<Shared>,
    routed: kube::Client,
}

struct Shared {
    current: RwLock<Arc<Generation>>,
    /// The last generation the server refused; 0 before any refusal (generations count from 1).
    refused: watch::Sender<u64>,
}

/// One certificate's client.
struct Generation {
    number: u64,
    client: kube::Client,
}

impl Shared {
    fn current(&self) -> Arc<Generation> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl NodeClient {
    /// Routes through `first` until another client is installed.
    pub(crate) fn new(first: kube::Client) -> Self {
        let namespace = first.default_namespace().to_string();
        let shared = Arc::new(Shared {
            current: RwLock::new(Arc::new(Generation { number: 1, client: first })),
            refused: watch::channel(0).0,
        });
        Self { routed: kube::Client::new(Route(shared.clone()), namespace), shared }
    }

    /// The client every part of the agent uses: its requests go to the current certificate's client.
    pub fn client(&self) -> kube::Client {
        self.routed.clone()
    }

    /// Makes `client` (of a new certificate) the one every new request goes through.
    fn install(&self, client: kube::Client) {
        let mut current = self.shared.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(Generation { number: current.number + 1, client });
    }

    /// Resolves once the server has refused (401) a request made with the current client.
    async fn refused(&self) {
        let current = self.shared.current().number;
        let mut refusals = self.shared.refused.subscribe();
        // The sender lives as long as `self`: waiting never fails.
        let _ = refusals.wait_for(|refused| *refused == current).await;
    }
}

/// The service under [`NodeClient::client`].
#[derive(Clone)]
struct Route(Arc<Shared>);

impl tower::Service<http::Request<Body>> for Route {
    type Response = http::Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            let generation = shared.current();
            let response = generation.client.send(request).await?;
            if response.status() == http::StatusCode::UNAUTHORIZED {
                shared.refused.send_replace(generation.number);
            }
            Ok(response)
        })
    }
}

/// One certificate kept current by [`keep`].
pub(crate) trait Keeper {
    fn certificate(&self) -> &NodeCertificate;
    /// Resolves once the server refuses the certificate in use; never for one the server does not see.
    fn refused(&self) -> impl Future<Output = ()> + Send;
    /// Gets a new certificate (with the join token when the server `refused` the current one) and puts it
    /// to use; its validity.
    fn renew(&self, refused: bool) -> impl Future<Output = Result<Validity, AgentError>> + Send;
}

/// Keeps the certificate of `keeper`, now valid over `validity`, current until `shutdown`; with none
/// (`validity` None) asks for the first at once, and again after failures, as for a renewal.
pub(crate) async fn keep(keeper: impl Keeper, validity: Option<Validity>, shutdown: CancellationToken) {
    let certificate = keeper.certificate();
    let span = tracing::info_span!("certificate", node = certificate.node(), signer = certificate.signer());
    async move {
        // Without a certificate, due since the epoch.
        let mut due = validity.map_or(0, |validity| deadline(validity, rand::random()));
        let mut failures = 0;
        // Refusals in a row, each of a certificate refused soon after it was put to use: one issued in the
        // very second its node was revoked is refused too, and a server that refuses every new certificate
        // must not have the agent ask for certificates in a loop.
        let mut refusals = 0;
        let mut installed = tokio::time::Instant::now();
        loop {
            let wait = Duration::from_secs(u64::try_from(due - now()).unwrap_or(0)).min(WAKE_AT_LEAST);
            let refused = tokio::select! {
                _ = shutdown.cancelled() => return,
                () = keeper.refused() => true,
                () = tokio::time::sleep(wait) => {
                    if now() < due {
                        continue;
                    }
                    false
                }
            };
            if refused {
                refusals = if installed.elapsed() < RETRY_MAX { refusals + 1 } else { 1 };
                let pause = if refusals > 1 { retry_after(refusals - 1) } else { Duration::ZERO };
                tracing::warn!(
                    ?pause,
                    "the API server refuses the node's certificate (401 Unauthorized): asking with the join token"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            } else if due == 0 {
                tracing::info!("asking for the node's certificate");
            } else {
                tracing::info!("renewing the node's certificate");
            }
            let renewed = tokio::select! {
                _ = shutdown.cancelled() => return,
                renewed = keeper.renew(refused) => renewed,
            };
            match renewed {
                Ok(validity) => {
                    failures = 0;
                    installed = tokio::time::Instant::now();
                    due = deadline(validity, rand::random());
                    let (expires, renews) = (timestamp(validity.not_after), timestamp(due));
                    tracing::info!(%expires, %renews, "the node's new certificate is in use");
                }
                Err(error) => {
                    failures += 1;
                    let pause = retry_after(failures);
                    let error = format!("{:#}", anyhow::Error::new(error));
                    tracing::warn!(%error, ?pause, "cannot renew the node's certificate, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

fn timestamp(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map(|t| t.to_string()).unwrap_or_else(|_| unix.to_string())
}

/// The node's client certificate, used through a [`NodeClient`].
pub(crate) struct ClientKeeper {
    pub(crate) client: NodeClient,
    pub(crate) certificate: NodeCertificate,
    pub(crate) bootstrap: Bootstrap,
}

impl Keeper for ClientKeeper {
    fn certificate(&self) -> &NodeCertificate {
        &self.certificate
    }

    async fn refused(&self) {
        self.client.refused().await
    }

    async fn renew(&self, refused: bool) -> Result<Validity, AgentError> {
        // A node renews its certificate as itself; one the server refuses can only ask with the join token.
        let requester = if refused { self.bootstrap.join_token_client()? } else { self.client.client() };
        let issued = self.certificate.request(&requester, &self.bootstrap.ca).await?;
        self.client.install(self.bootstrap.certificate_client(&issued)?);
        Ok(issued.validity)
    }
}

/// The kubelet port's serving certificate, asked for as the node.
pub(crate) struct ServingKeeper {
    pub(crate) client: kube::Client,
    pub(crate) certificate: NodeCertificate,
    /// The cluster CA's certificates, DER.
    pub(crate) ca: Vec<Vec<u8>>,
    pub(crate) serving: Arc<ServingCertificate>,
}

impl ServingKeeper {
    /// Puts the stored certificate to use if it is usable; its validity, or None when there is none to use,
    /// which [`keep`] then asks for. Asking needs the controllers to approve and sign: the agent starts its
    /// heartbeat and pods meanwhile, and the port's handshakes fail until a certificate is installed.
    pub(crate) fn start(&self) -> Result<Option<Validity>, AgentError> {
        self.certificate.stored(&self.ca)?.map(|issued| self.install(&issued)).transpose()
    }

    fn install(&self, issued: &Issued) -> Result<Validity, AgentError> {
        self.serving.install(&issued.cert_pem, &issued.key_pem)?;
        Ok(issued.validity)
    }
}

impl Keeper for ServingKeeper {
    fn certificate(&self) -> &NodeCertificate {
        &self.certificate
    }

    /// The API server does not present the kubelet port's certificate to itself: nothing to hear.
    async fn refused(&self) {
        std::future::pending().await
    }

    async fn renew(&self, _: bool) -> Result<Validity, AgentError> {
        let issued = self.certificate.request(&self.client, &self.ca).await?;
        self.install(&issued)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use futures::FutureExt;

    use super::*;

    #[test]
    fn certificates_are_renewed_at_seventy_to_ninety_percent_of_their_lifetime() {
        let validity = Validity { not_before: 1_000, not_after: 2_000 };
        assert_eq!(deadline(validity, 0.0), 1_700);
        assert_eq!(deadline(validity, 0.5), 1_800);
        assert_eq!(deadline(validity, 1.0), 1_900);
        assert_eq!(deadline(validity, 7.0), 1_900, "jitter beyond its range is clamped");
        // A year's certificate: between 255 and 329 days after it starts.
        let year = Validity { not_before: 0, not_after: 365 * 86_400 };
        for _ in 0..100 {
            let at = deadline(year, rand::random());
            assert!((255 * 86_400..329 * 86_400).contains(&at), "{at}");
        }
    }

    #[test]
    fn failed_attempts_back_off_to_a_bound() {
        let waits: Vec<u64> = (1..=10).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_after(u32::MAX), RETRY_MAX);
    }

    /// A kube Client whose server answers every request with `status` and `body`, recording the paths.
    fn fake(status: u16, body: &'static str, seen: Arc<Mutex<Vec<String>>>) -> kube::Client {
        let service = tower::service_fn(move |request: http::Request<Body>| {
            seen.lock().unwrap().push(request.uri().path().to_string());
            let response = http::Response::builder().status(status).body(Body::from(body.as_bytes().to_vec()));
            async move { Ok::<_, Infallible>(response.unwrap()) }
        });
        kube::Client::new(service, "default")
    }

    async fn get(client: &kube::Client, path: &str) -> Result<String, kube::Error> {
        client.request_text(http::Request::get(path).body(Vec::new()).unwrap()).await
    }

    #[tokio::test]
    async fn requests_follow_the_installed_certificate_and_its_refusal_is_heard() {
        let (old, new) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let node = NodeClient::new(fake(200, "old", old.clone()));
        let client = node.client();
        assert_eq!(get(&client, "/a").await.unwrap(), "old");
        assert!(node.refused().now_or_never().is_none(), "no refusal yet");

        node.install(fake(401, r#"{"kind":"Status","code":401,"reason":"Unauthorized"}"#, new.clone()));
        // The client handed out before the swap follows it.
        let refused = get(&client, "/b").await.unwrap_err();
        assert!(matches!(&refused, kube::Error::Api(status) if status.code == 401), "{refused:?}");
        assert_eq!((old.lock().unwrap().clone(), new.lock().unwrap().clone()), (vec!["/a".into()], vec!["/b".into()]));
        assert!(node.refused().now_or_never().is_some(), "the current certificate was refused");

        // A refusal of a certificate no longer in use is no reason to ask again.
        node.install(fake(200, "newest", Arc::default()));
        assert!(node.refused().now_or_never().is_none());
        assert_eq!(get(&client, "/c").await.unwrap(), "newest");
    }

    /// A certificate whose renewals are recorded, which fail as often as `failures` says first.
    struct Fake {
        certificate: NodeCertificate,
        renewals: Mutex<Vec<bool>>,
        failures: Mutex<u32>,
        refusal: tokio::sync::Notify,
        renewed: tokio::sync::Notify,
    }

    impl Fake {
        fn new(dir: &std::path::Path, failures: u32) -> Self {
            Fake {
                certificate: NodeCertificate::client("a", dir).unwrap(),
                renewals: Mutex::default(),
                failures: Mutex::new(failures),
                refusal: tokio::sync::Notify::new(),
                renewed: tokio::sync::Notify::new(),
            }
        }
    }

    impl Keeper for &Fake {
        fn certificate(&self) -> &NodeCertificate {
            &self.certificate
        }

        async fn refused(&self) {
            self.refusal.notified().await
        }

        async fn renew(&self, refused: bool) -> Result<Validity, AgentError> {
            self.renewals.lock().unwrap().push(refused);
            self.renewed.notify_one();
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(AgentError::Config("no".into()));
            }
            Ok(Validity { not_before: now(), not_after: now() + 86_400 })
        }
    }

    #[tokio::test]
    async fn a_missing_certificate_is_asked_for_at_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), 0);
        let shutdown = CancellationToken::new();
        let kept = keep(&fake, None, shutdown.clone());
        let checks = async {
            fake.renewed.notified().await;
            assert_eq!(*fake.renewals.lock().unwrap(), [false]);
            // The one issued, due in most of a day, is kept: the next ask is on a refusal.
            fake.refusal.notify_one();
            fake.renewed.notified().await;
            assert_eq!(*fake.renewals.lock().unwrap(), [false, true]);
            shutdown.cancel();
        };
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(kept, checks) }).await.unwrap();
    }

    #[tokio::test]
    async fn a_due_or_refused_certificate_is_renewed_and_failures_and_refusals_in_a_row_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), 1);
        let shutdown = CancellationToken::new();
        // Due since long ago: renewed at once, the first attempt failing and the next, 2 s later, not.
        let past = Validity { not_before: now() - 1_000, not_after: now() - 10 };
        let kept = keep(&fake, Some(past), shutdown.clone());
        let checks = async {
            fake.renewed.notified().await;
            fake.renewed.notified().await;
            assert_eq!(*fake.renewals.lock().unwrap(), [false, false]);
            // Then the new one, due in most of a day, is renewed only when refused.
            fake.refusal.notify_one();
            fake.renewed.notified().await;
            assert_eq!(*fake.renewals.lock().unwrap(), [false, false, true]);
            // The new one refused at once too: asked for again after a pause, not in a loop.
            let refused = tokio::time::Instant::now();
            fake.refusal.notify_one();
            fake.renewed.notified().await;
            assert!(refused.elapsed() >= RETRY_FIRST, "{:?}", refused.elapsed());
            assert_eq!(*fake.renewals.lock().unwrap(), [false, false, true, true]);
            shutdown.cancel();
        };
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(kept, checks) }).await.unwrap();
    }
}
