//! A route's external authorization (`ext_authz`): Envoy's `envoy.service.auth.v3.Authorization`
//! gRPC API, so the servers written for Envoy (OPA's Envoy plugin and others) work unchanged.
//! [`AuthzPolicy::check`] asks one of the pool's endpoints (round robin, over the pool's TLS when
//! it has one) within the route's timeout and says what the answer means for the request.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use sluice_bundle::{DEFAULT_EXT_AUTHZ_TIMEOUT, ExtAuthz, FailMode, RESERVED};
use sluice_proto::envoy::config::core::v3::HeaderValueOption;
use sluice_proto::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use sluice_proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use sluice_proto::envoy::service::auth::v3::check_response::HttpResponse;
use sluice_proto::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use sluice_tls::Watched;
use sluice_tls::rustls::pki_types::ServerName;
use sluice_tls::upstream::UpstreamFiles;
use tokio::net::TcpStream;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};

use crate::body::wire::Io;

/// A route's `ext_authz`, compiled: its pool's endpoints as gRPC channels (made on first use).
#[derive(Debug)]
pub struct AuthzPolicy {
    /// The pool, as metrics and errors name it.
    pub pool: Box<str>,
    targets: Box<[Target]>,
    next: AtomicUsize,
    pub timeout: Duration,
    pub fail_open: bool,
    /// Request fields sent (lower case); `None`: all.
    headers: Option<Box<[HeaderName]>>,
    /// Body bytes sent, at most.
    pub max_body: usize,
}

/// One endpoint of the authorization pool.
struct Target {
    endpoint: Endpoint,
    connect: Connect,
    channel: OnceLock<Channel>,
}

/// Opens connections to an endpoint: TCP, then TLS when the pool has it.
#[derive(Clone)]
struct Connect {
    address: Arc<str>,
    tls: Option<(Arc<Watched<UpstreamFiles>>, ServerName<'static>)>,
    timeout: Duration,
}

/// What the server decided.
#[derive(Debug)]
pub enum Verdict {
    /// Allowed, with changes to the request's fields.
    Allow(Changes),
    /// Denied: what the client gets.
    Deny(Box<Denied>),
}

/// Request fields the server asked to set, add or remove.
#[derive(Debug, Default)]
pub struct Changes {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub append: Vec<(HeaderName, HeaderValue)>,
    pub add_if_absent: Vec<(HeaderName, HeaderValue)>,
    pub overwrite_if_present: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
    /// Fields added to the client's answer.
    pub response: Vec<(HeaderName, HeaderValue)>,
}

/// A denial as the client receives it: the server's status (403 if it gave none), fields and
/// body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// Why a check failed (and the fail mode decides).
#[derive(Debug)]
pub enum Failure {
    Timeout,
    Error(String),
}

/// A route's checks, by result (`sluice_ext_authz_checks_total`), and the requests a failed
/// check let through (`fail_mode: open`).
#[derive(Debug, Default)]
pub struct AuthzStats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub error: AtomicU64,
    pub timeout: AtomicU64,
    pub fail_open: AtomicU64,
}

// === impl AuthzPolicy ===

impl AuthzPolicy {
    /// `cfg` against its pool: `endpoints` (address and, for a TLS pool, the name its certificate
    /// is verified against), the pool's TLS config and connect timeout.
    pub fn compile(
        cfg: &ExtAuthz,
        endpoints: Vec<(Arc<str>, Option<ServerName<'static>>)>,
        tls: Option<Arc<Watched<UpstreamFiles>>>,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let targets = endpoints
            .into_iter()
            .map(|(address, name)| {
                let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
                    .map_err(|e| format!("endpoint {address}: {e}"))?
                    .connect_timeout(connect_timeout)
                    .tcp_nodelay(true);
                let tls = match (&tls, name) {
                    (Some(config), Some(name)) => Some((config.clone(), name)),
                    (Some(_), None) => return Err(format!("endpoint {address}: no name to verify it by")),
                    (None, _) => None,
                };
                Ok(Target {
                    endpoint,
                    connect: Connect { address, tls, timeout: connect_timeout },
                    channel: OnceLock::new(),
                })
            })
            .collect::<Result<Box<[_]>, String>>()?;
        let headers = cfg.headers.as_ref().map(|names| {
            names
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
                .collect()
        });
        Ok(Self {
            pool: cfg.pool.as_str().into(),
            targets,
            next: AtomicUsize::new(0),
            timeout: cfg.timeout.unwrap_or(DEFAULT_EXT_AUTHZ_TIMEOUT).get(),
            fail_open: cfg.fail_mode == Some(FailMode::Open),
            headers,
            max_body: cfg.max_body.map_or(0, |b| usize::try_from(b.0).unwrap_or(usize::MAX)),
        })
    }

    /// Whether field `name` is sent to the server.
    pub fn sends(&self, name: &HeaderName) -> bool {
        self.headers.as_ref().is_none_or(|h| h.contains(name))
    }

    /// Asks the server about `request` within the timeout.
    pub async fn check(&self, request: CheckRequest) -> Result<Verdict, Failure> {
        let n = self.targets.len();
        if n == 0 {
            return Err(Failure::Error(format!("pool {} has no endpoints", self.pool)));
        }
        let target = &self.targets[self.next.fetch_add(1, Ordering::Relaxed) % n];
        let channel = target
            .channel
            .get_or_init(|| target.endpoint.clone().connect_with_connector_lazy(target.connect.clone()))
            .clone();
        let mut client = AuthorizationClient::new(channel);
        let answer = match tokio::time::timeout(self.timeout, client.check(request)).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(status)) => {
                return Err(Failure::Error(format!(
                    "{}: {} {}",
                    target.connect.address,
                    status.code(),
                    status.message()
                )));
            }
            Ok(Ok(answer)) => answer.into_inner(),
        };
        Ok(verdict(answer))
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("address", &self.connect.address).finish()
    }
}

/// What an answer means: gRPC status OK allows (with the `ok_response`'s changes), any other
/// status denies (with the `denied_response`, or 403).
fn verdict(answer: CheckResponse) -> Verdict {
    let allowed = answer.status.as_ref().is_none_or(|s| s.code == 0);
    if allowed {
        let mut changes = Changes::default();
        if let Some(HttpResponse::OkResponse(ok)) = answer.http_response {
            for option in &ok.headers {
                let Some((name, value)) = field(option) else { continue };
                #[allow(deprecated)]
                let action = match option.append {
                    Some(true) => HeaderAppendAction::AppendIfExistsOrAdd,
                    Some(false) => HeaderAppendAction::OverwriteIfExistsOrAdd,
                    None => HeaderAppendAction::try_from(option.append_action)
                        .unwrap_or(HeaderAppendAction::AppendIfExistsOrAdd),
                };
                let list = match action {
                    HeaderAppendAction::AppendIfExistsOrAdd => &mut changes.append,
                    HeaderAppendAction::AddIfAbsent => &mut changes.add_if_absent,
                    HeaderAppendAction::OverwriteIfExistsOrAdd => &mut changes.set,
                    HeaderAppendAction::OverwriteIfExists => &mut changes.overwrite_if_present,
                };
                list.push((name, value));
            }
            changes.remove = ok
                .headers_to_remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
                .filter(|n| !reserved(n))
                .collect();
            changes.response = ok.response_headers_to_add.iter().filter_map(field).collect();
        }
        return Verdict::Allow(changes);
    }
    let denied = match answer.http_response {
        Some(HttpResponse::DeniedResponse(d) | HttpResponse::ErrorResponse(d)) => Denied {
            status: d
                .status
                .and_then(|s| u16::try_from(s.code).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|s| s.as_u16() >= 200)
                .unwrap_or(StatusCode::FORBIDDEN),
            headers: d.headers.iter().filter_map(field).collect(),
            body: Bytes::from(d.body),
        },
        _ => Denied { status: StatusCode::FORBIDDEN, headers: Vec::new(), body: Bytes::new() },
    };
    Verdict::Deny(Box::new(denied))
}

/// A field the server sent, when it is one a server may change (not framing, `Host` or a
/// connection field: those are the proxy's to write).
fn field(option: &HeaderValueOption) -> Option<(HeaderName, HeaderValue)> {
    let h = option.header.as_ref()?;
    let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?;
    if reserved(&name) {
        tracing::debug!(field = %name, "authorization server set a field the proxy owns; ignored");
        return None;
    }
    let value = if h.raw_value.is_empty() {
        HeaderValue::from_str(&h.value).ok()?
    } else {
        HeaderValue::from_bytes(&h.raw_value).ok()?
    };
    Some((name, value))
}

fn reserved(name: &HeaderName) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name.as_str()))
}

// === impl Changes ===

impl Changes {
    /// Applies the server's changes to the request's fields; what it adds to the answer is
    /// returned.
    pub fn apply(self, headers: &mut http::HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in self.set {
            headers.insert(name, value);
        }
        for (name, value) in self.append {
            headers.append(name, value);
        }
        for (name, value) in self.add_if_absent {
            if !headers.contains_key(&name) {
                headers.insert(name, value);
            }
        }
        for (name, value) in self.overwrite_if_present {
            if headers.contains_key(&name) {
                headers.insert(name, value);
            }
        }
        self.response
    }
}

// === impl Connect ===

impl Service<Uri> for Connect {
    type Response = TokioIo<Io>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Io>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connect timeout");
            let connecting = async {
                let tcp = TcpStream::connect(&*this.address).await?;
                tcp.set_nodelay(true)?;
                Ok::<_, io::Error>(match &this.tls {
                    None => Io::Plain(tcp),
                    Some((config, name)) => {
                        let connector = sluice_tls::tokio_rustls::TlsConnector::from(config.current());
                        Io::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
                    }
                })
            };
            let io = tokio::time::timeout(this.timeout, connecting).await.map_err(|_| timed_out())??;
            Ok(TokioIo::new(io))
        })
    }
}

/// The request's fields as the API carries them: lower-case names, repeated fields joined with
/// `,` (as Envoy does).
pub fn header_map<'h>(
    fields: impl Iterator<Item = (&'h HeaderName, &'h HeaderValue)>,
) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    for (name, value) in fields {
        let value = String::from_utf8_lossy(value.as_bytes());
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    out
}
