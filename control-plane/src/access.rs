//! Who is calling, and what they may do: the one permission table.
//!
//! Authentication happens once per call, before the handler ([`Access::authenticate`], run by the
//! services' interceptor): a data plane by its client certificate (a SPIFFE-style URI SAN naming
//! its fleet and node), an operator by a bearer token or a client certificate the policy file
//! names. Authorization happens in the handler, which knows the fleet ([`Access::authorize`]),
//! against [`Rpc::need`], the table `docs/security.md` prints and a test walks.
//!
//! Every refusal is logged, counted (`sluice_cp_access_denied_total`) and audited, aggregated per
//! principal, reason and fleet each minute ([`Denials`]), so a credential cannot flood the
//! audit trail.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use sluice_bundle::access::{Policy, Role, role_on};
use sluice_tls::rustls::pki_types::CertificateDer;
use sluice_tls::{Build, CertInfo, Contents, Identity, TlsError, Watched};
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Every RPC of the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    Validate,
    Diff,
    Apply,
    GetVersion,
    ListHistory,
    Rollback,
    ListDataPlanes,
    ListAudit,
    GetRollout,
    RolloutAction,
    SetDefaultStrategy,
    GetDefaultStrategy,
    GetTrafficReport,
    ListSigningKeys,
    ActivateSigningKey,
    RetireSigningKey,
    GetTrustSet,
    PublishTrustSet,
    PurgeCache,
    Stream,
}

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// An operator with at least this role on the fleet.
    Role(Role),
    /// The data plane the request speaks for.
    DataPlane,
}

/// Who made a call, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator {
        name: String,
        roles: BTreeMap<String, Role>,
    },
    /// `node` is `None` for a fleet-scoped certificate (allowed only with `fleet_scoped`).
    DataPlane {
        fleet: String,
        node: Option<String>,
    },
    /// Anyone, when the control plane runs with `--insecure-allow-anonymous` (loopback only).
    Anonymous,
}

/// Why a call was refused; a reason is fixed words, for the `reason` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The principal as far as it is known (`anonymous`, a name, `node n of fleet f`).
    pub who: String,
    pub reason: &'static str,
    pub fleet: String,
    pub message: String,
    /// Unauthenticated (no usable credential) rather than permission denied.
    pub unauthenticated: bool,
}

/// The policy file, watched like certificates.
#[derive(Debug, Clone)]
pub struct PolicyFile(pub PathBuf);

/// How the control plane authenticates.
pub struct Access {
    /// The trust domain of data-plane and operator certificates (`spiffe://<this>/…`).
    pub trust_domain: String,
    /// Accept fleet-scoped data-plane certificates (the node id then comes from the hello).
    pub fleet_scoped: bool,
    /// Operators and their roles; `None` with `anonymous`.
    pub policy: Option<Arc<Watched<PolicyFile>>>,
    /// No authentication at all: only with an explicit flag, on loopback.
    pub anonymous: bool,
    pub denials: Denials,
    /// How often refusals are written to the audit trail ([`AUDIT_EVERY`]).
    pub audit_every: std::time::Duration,
}

/// Refusals are audited once a minute, one row per principal, reason and fleet.
pub const AUDIT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Refusals awaiting their audit row, by who, reason and fleet: how many, and the first message.
#[derive(Debug, Default)]
pub struct Denials {
    pending: Mutex<HashMap<DenialKey, (u64, String)>>,
    /// By reason, since start: `sluice_cp_access_denied_total`.
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

/// Who was refused, why, on which fleet.
type DenialKey = (String, &'static str, String);

/// Refused calls of one principal, reason and fleet since the last audit row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Denied {
    pub who: String,
    pub reason: &'static str,
    pub fleet: String,
    pub count: u64,
    pub message: String,
}

/// Most distinct refusals kept per minute; more are folded into one row.
const MAX_PENDING: usize = 1024;

// === impl Rpc ===

impl Rpc {
    pub const ALL: [Rpc; 20] = [
        Rpc::Validate,
        Rpc::Diff,
        Rpc::Apply,
        Rpc::GetVersion,
        Rpc::ListHistory,
        Rpc::Rollback,
        Rpc::ListDataPlanes,
        Rpc::ListAudit,
        Rpc::GetRollout,
        Rpc::RolloutAction,
        Rpc::SetDefaultStrategy,
        Rpc::GetDefaultStrategy,
        Rpc::GetTrafficReport,
        Rpc::ListSigningKeys,
        Rpc::ActivateSigningKey,
        Rpc::RetireSigningKey,
        Rpc::GetTrustSet,
        Rpc::PublishTrustSet,
        Rpc::PurgeCache,
        Rpc::Stream,
    ];

    /// The permission table.
    pub fn need(self) -> Need {
        match self {
            Rpc::Validate
            | Rpc::Diff
            | Rpc::GetVersion
            | Rpc::ListHistory
            | Rpc::ListDataPlanes
            | Rpc::ListAudit
            | Rpc::GetRollout
            | Rpc::GetDefaultStrategy
            | Rpc::GetTrafficReport
            | Rpc::ListSigningKeys
            | Rpc::GetTrustSet => Need::Role(Role::Viewer),
            Rpc::Apply | Rpc::Rollback | Rpc::RolloutAction | Rpc::PurgeCache => Need::Role(Role::Operator),
            // Asked for on fleet `*`: admin of every fleet, since keys sign for all of them.
            Rpc::SetDefaultStrategy
            | Rpc::ActivateSigningKey
            | Rpc::RetireSigningKey
            | Rpc::PublishTrustSet => Need::Role(Role::Admin),
            Rpc::Stream => Need::DataPlane,
        }
    }

    /// The gRPC method name.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Validate => "ConfigService/Validate",
            Rpc::Diff => "ConfigService/Diff",
            Rpc::Apply => "ConfigService/Apply",
            Rpc::GetVersion => "ConfigService/GetVersion",
            Rpc::ListHistory => "ConfigService/ListHistory",
            Rpc::Rollback => "ConfigService/Rollback",
            Rpc::ListDataPlanes => "ConfigService/ListDataPlanes",
            Rpc::ListAudit => "ConfigService/ListAudit",
            Rpc::GetRollout => "ConfigService/GetRollout",
            Rpc::RolloutAction => "ConfigService/RolloutAction",
            Rpc::SetDefaultStrategy => "ConfigService/SetDefaultStrategy",
            Rpc::GetDefaultStrategy => "ConfigService/GetDefaultStrategy",
            Rpc::GetTrafficReport => "ConfigService/GetTrafficReport",
            Rpc::ListSigningKeys => "ConfigService/ListSigningKeys",
            Rpc::ActivateSigningKey => "ConfigService/ActivateSigningKey",
            Rpc::RetireSigningKey => "ConfigService/RetireSigningKey",
            Rpc::GetTrustSet => "ConfigService/GetTrustSet",
            Rpc::PublishTrustSet => "ConfigService/PublishTrustSet",
            Rpc::PurgeCache => "ConfigService/PurgeCache",
            Rpc::Stream => "DataPlaneService/Stream",
        }
    }
}

// === impl Caller ===

impl Caller {
    /// The name the audit trail records.
    pub fn principal(&self) -> String {
        match self {
            Caller::Operator { name, .. } => name.clone(),
            Caller::DataPlane { fleet, node: Some(node) } => format!("data-plane {node} of {fleet}"),
            Caller::DataPlane { fleet, node: None } => format!("data-plane of {fleet}"),
            Caller::Anonymous => "anonymous".to_owned(),
        }
    }

    /// Whether it may see `fleet` (for calls over every fleet).
    pub fn may_view(&self, fleet: &str) -> bool {
        match self {
            Caller::Operator { roles, .. } => role_on(roles, fleet).is_some(),
            Caller::Anonymous => true,
            Caller::DataPlane { .. } => false,
        }
    }
}

// === impl Refusal ===

impl Refusal {
    fn denied(who: String, reason: &'static str, fleet: &str, message: String) -> Self {
        Self { who, reason, fleet: fleet.to_owned(), message, unauthenticated: false }
    }

    fn unauthenticated(who: String, reason: &'static str, message: String) -> Self {
        Self { who, reason, fleet: String::new(), message, unauthenticated: true }
    }

    pub fn to_status(&self) -> Status {
        if self.unauthenticated {
            Status::unauthenticated(self.message.clone())
        } else {
            Status::permission_denied(self.message.clone())
        }
    }
}

// === impl PolicyFile ===

impl Build for PolicyFile {
    type Output = Policy;

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.0.clone()]
    }

    fn build(&self, contents: &Contents) -> Result<(Policy, Option<CertInfo>), TlsError> {
        let text = String::from_utf8_lossy(contents.get(&self.0));
        let policy = Policy::parse(&text)
            .map_err(|e| TlsError::Invalid { path: self.0.clone(), reason: e.to_string() })?;
        Ok((policy, None))
    }
}

// === impl Access ===

impl Access {
    /// Nobody authenticates: every caller is admin and every data plane is trusted for what it
    /// says. Tests, and `--insecure-allow-anonymous` on loopback.
    pub fn anonymous() -> Self {
        Self {
            trust_domain: sluice_tls::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            fleet_scoped: false,
            policy: None,
            anonymous: true,
            denials: Denials::default(),
            audit_every: AUDIT_EVERY,
        }
    }

    /// Who is calling: a client certificate's identity, else a bearer token's principal.
    ///
    /// A data-plane certificate makes the caller that data plane whatever else is sent, so a
    /// token cannot turn a data plane's connection into an operator's. For operators, a bearer
    /// token, when sent, wins over an operator certificate.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[CertificateDer<'_>]>,
    ) -> Result<Caller, Refusal> {
        let cert = match peer_certs.and_then(|c| c.first()) {
            Some(der) => {
                let info = CertInfo::parse(der).map_err(|e| {
                    Refusal::unauthenticated(
                        "unknown".into(),
                        "bad_certificate",
                        format!("unreadable certificate: {e}"),
                    )
                })?;
                match Identity::from_uris(&info.uris, &self.trust_domain) {
                    Ok(Identity::DataPlane { fleet, node }) => {
                        if node.is_none() && !self.fleet_scoped {
                            return Err(Refusal::unauthenticated(
                                format!("data-plane of {fleet}"),
                                "fleet_scoped_certificate",
                                "fleet-scoped data-plane certificates are not accepted here \
                                 (--allow-fleet-scoped-certificates); present one that names the node"
                                    .into(),
                            ));
                        }
                        return Ok(Caller::DataPlane { fleet, node });
                    }
                    Ok(Identity::Operator { .. }) => info.uris,
                    Err(e) => return Err(Refusal::unauthenticated("unknown".into(), "bad_certificate", e)),
                }
            }
            None => Vec::new(),
        };
        let policy = self.policy.as_ref().map(|p| p.current());
        if policy.is_none() && self.anonymous {
            return Ok(Caller::Anonymous);
        }
        if let Some(value) = metadata.get("authorization") {
            let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
            let Some(token) = token.filter(|t| !t.is_empty()) else {
                return Err(Refusal::unauthenticated(
                    "unknown".into(),
                    "bad_token",
                    "the authorization header is not `Bearer <token>`".into(),
                ));
            };
            return match policy.as_ref().and_then(|p| p.by_token(token)) {
                Some(p) => Ok(Caller::Operator { name: p.name.clone(), roles: p.roles.clone() }),
                // Never the token itself in a message or a log.
                None => Err(Refusal::unauthenticated(
                    "unknown token".into(),
                    "unknown_token",
                    "the bearer token is not in the control plane's policy (revoked, or never issued)".into(),
                )),
            };
        }
        if !cert.is_empty() {
            let found = policy.as_ref().and_then(|p| cert.iter().find_map(|san| p.by_certificate(san)));
            return match found {
                Some(p) => Ok(Caller::Operator { name: p.name.clone(), roles: p.roles.clone() }),
                None => Err(Refusal::unauthenticated(
                    cert.join(","),
                    "unknown_certificate",
                    format!("no principal in the policy has the certificate {}", cert.join(", ")),
                )),
            };
        }
        Err(Refusal::unauthenticated(
            "anonymous".into(),
            "no_credentials",
            "no credentials: send a bearer token (SLUICE_TOKEN or --token-file) or a client certificate"
                .into(),
        ))
    }

    /// Whether `caller` may make `rpc` on `fleet`. For the stream, `fleet` and `node` are what
    /// the hello says; for calls over every fleet, `fleet` is empty.
    pub fn authorize(
        &self,
        caller: &Caller,
        rpc: Rpc,
        fleet: &str,
        node: Option<&str>,
    ) -> Result<(), Refusal> {
        let who = caller.principal();
        match (rpc.need(), caller) {
            (_, Caller::Anonymous) => Ok(()),
            (Need::DataPlane, Caller::DataPlane { fleet: f, node: n }) => {
                if f != fleet || n.as_deref().is_some_and(|n| Some(n) != node) {
                    let said = format!("node {} of fleet {fleet}", node.unwrap_or("?"));
                    return Err(Refusal::denied(
                        who.clone(),
                        "impersonation",
                        fleet,
                        format!("{who} may not speak for {said}"),
                    ));
                }
                Ok(())
            }
            (Need::DataPlane, Caller::Operator { .. }) => Err(Refusal::denied(
                who,
                "wrong_service",
                fleet,
                "an operator credential cannot open a data-plane stream".into(),
            )),
            (Need::Role(_), Caller::DataPlane { .. }) => Err(Refusal::denied(
                who,
                "wrong_service",
                fleet,
                format!("a data-plane certificate cannot call {}", rpc.name()),
            )),
            (Need::Role(role), Caller::Operator { roles, .. }) => {
                // A call over every fleet needs the role somewhere; its results are filtered.
                let has =
                    if fleet.is_empty() { roles.values().copied().max() } else { role_on(roles, fleet) };
                if has.is_some_and(|r| r >= role) {
                    return Ok(());
                }
                let on = if fleet.is_empty() { "any fleet".to_owned() } else { format!("fleet `{fleet}`") };
                let holds = has.map_or_else(|| "no role".to_owned(), |r| format!("role {r}"));
                Err(Refusal::denied(
                    who.clone(),
                    "missing_role",
                    fleet,
                    format!("{} needs role {role} on {on}; {who} holds {holds} there", rpc.name()),
                ))
            }
        }
    }

    /// Records a refusal of a call to `rpc` (a method or service name): logged now, counted,
    /// audited within the minute.
    pub fn refused(&self, rpc: &str, r: &Refusal) {
        tracing::warn!(rpc, who = %r.who, reason = r.reason, fleet = %r.fleet, "refused: {}", r.message);
        self.denials.record(r);
    }
}

// === impl Denials ===

impl Denials {
    fn record(&self, r: &Refusal) {
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner).entry(r.reason).or_default() += 1;
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let full = pending.len() >= MAX_PENDING;
        let key = (r.who.clone(), r.reason, r.fleet.clone());
        let key = if full && !pending.contains_key(&key) {
            ("(others)".into(), "folded", String::new())
        } else {
            key
        };
        pending.entry(key).or_insert_with(|| (0, r.message.clone())).0 += 1;
    }

    /// Refusals since the last call, to audit.
    pub fn take(&self) -> Vec<Denied> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let mut rows: Vec<_> = pending
            .into_iter()
            .map(|((who, reason, fleet), (count, message))| Denied { who, reason, fleet, count, message })
            .collect();
        rows.sort();
        rows
    }

    /// Refusals by reason since start.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Writes the refusals of each minute to the audit trail, one row per principal, reason and
/// fleet with its count, until `stop` (and once more then).
pub async fn audit_refusals(
    access: Arc<Access>,
    store: crate::store::Store,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(access.audit_every);
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        for d in access.denials.take() {
            let entry = crate::store::AuditEntry {
                actor: d.who,
                action: "access_denied".to_owned(),
                fleet: d.fleet,
                version: None,
                detail: serde_json::json!({ "reason": d.reason, "count": d.count, "message": d.message }),
            };
            if let Err(e) = store.record_audit(&entry).await {
                tracing::warn!(error = %e, "cannot audit refused calls");
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
