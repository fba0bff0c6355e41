//! Signing: the private keys this replica holds (files, re-read when they change), the active
//! set every replica agrees on (the database's), and freshness statements signed with it.
//!
//! A replica signs with exactly the active keys. If it lacks one (its key files lag behind a
//! rotation), it refuses to sign a version rather than sign with a set the others do not use.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_bundle::sign::freshness::Freshness;
use sluice_bundle::sign::trust::{RootKeys, TrustSet};
use sluice_bundle::sign::{Signature, SigningKey};
use sluice_proto::v1 as pb;
use sluice_tls::watch::{Build, Contents};
use sluice_tls::{CertInfo, TlsError, Watched};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::fleet::Head;
use crate::store::{Store, unix_now};

/// How long a freshness statement vouches for a version by default. Hours, not days: it bounds
/// how long a frozen or replayed stream can keep a data plane on an old version, while a
/// control-plane outage shorter than it goes unnoticed by data planes (and a longer one only
/// marks them stale; they keep serving).
pub const DEFAULT_FRESHNESS_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Signing-key files (or directories of them: every `*.json` inside).
#[derive(Debug, Clone)]
pub struct KeyFiles(pub Vec<PathBuf>);

/// What this replica signs with.
pub struct Keyring {
    held: Arc<Watched<KeyFiles>>,
    /// The active key ids, as the database last said.
    active: ArcSwap<Vec<String>>,
    lifetime: Duration,
    /// Statements signed, by fleet and version: renewed once a quarter of the lifetime old.
    statements: Mutex<HashMap<(String, u64), Statement>>,
    /// The newest root-signed trust set, pushed to every data plane.
    trust: watch::Sender<Option<(u64, Arc<pb::SignedStatement>)>>,
    /// Root keys to check a trust set against before storing it (`--root-keys`); data planes
    /// check it themselves either way.
    roots: Option<RootKeys>,
}

#[derive(Clone)]
struct Statement {
    sha256: String,
    issued: i64,
    keys: Vec<String>,
    signed: Arc<pb::SignedStatement>,
}

// === impl KeyFiles ===

impl Build for KeyFiles {
    type Output = Vec<SigningKey>;

    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for p in &self.0 {
            match std::fs::read_dir(p) {
                Ok(dir) => {
                    let mut inside: Vec<PathBuf> = dir
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
                        .collect();
                    inside.sort();
                    paths.extend(inside);
                }
                Err(_) => paths.push(p.clone()),
            }
        }
        paths
    }

    fn build(
        &self,
        contents: &Contents,
    ) -> std::result::Result<(Vec<SigningKey>, Option<CertInfo>), TlsError> {
        let mut keys: Vec<SigningKey> = Vec::new();
        for path in self.paths() {
            let text = String::from_utf8_lossy(contents.get(&path));
            let key = SigningKey::from_file(&text)
                .map_err(|e| TlsError::Invalid { path: path.clone(), reason: e.to_string() })?;
            if !keys.iter().any(|k| k.key_id() == key.key_id()) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            let names: Vec<String> = self.0.iter().map(|p| p.display().to_string()).collect();
            return Err(TlsError::Invalid {
                path: names.join(", ").into(),
                reason: "no signing key in it".into(),
            });
        }
        Ok((keys, None))
    }
}

// === impl Keyring ===

impl Keyring {
    /// Reads the key files; the process should not start without a readable key.
    pub fn load(files: KeyFiles, lifetime: Duration) -> std::result::Result<Self, TlsError> {
        Ok(Self::new(Watched::load("signing_keys", files)?, lifetime))
    }

    pub fn new(held: Arc<Watched<KeyFiles>>, lifetime: Duration) -> Self {
        Self {
            held,
            active: ArcSwap::from_pointee(Vec::new()),
            lifetime,
            statements: Mutex::default(),
            trust: watch::channel(None).0,
            roots: None,
        }
    }

    /// Checks trust sets against these root keys before storing them.
    pub fn with_roots(mut self, roots: Option<RootKeys>) -> Self {
        self.roots = roots;
        self
    }

    /// The newest trust set, as it changes.
    pub fn trust(&self) -> watch::Receiver<Option<(u64, Arc<pb::SignedStatement>)>> {
        self.trust.subscribe()
    }

    /// Checks a trust set before it is stored: its shape, a signature at least, and the
    /// threshold of root keys when this control plane knows them. Its version, key ids and
    /// signatures.
    pub fn check_trust_set(
        &self,
        statement: &pb::SignedStatement,
    ) -> Result<(u64, Vec<String>, Vec<Signature>)> {
        let set =
            TrustSet::decode(&statement.statement).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let keys = set.trusted().map_err(|e| Error::InvalidArgument(format!("trust set: {e}")))?;
        if statement.signatures.is_empty() {
            return Err(Error::InvalidArgument("the trust set is not signed by any root key".into()));
        }
        let sigs: Vec<Signature> = statement
            .signatures
            .iter()
            .map(|s| Signature { key_id: s.key_id.clone(), signature: s.signature.clone() })
            .collect();
        if let Some(roots) = &self.roots {
            roots
                .verify(&statement.statement, &sigs, 0)
                .map_err(|e| Error::InvalidArgument(format!("trust set refused: {e}")))?;
        }
        Ok((set.version, keys.key_ids().into_iter().map(str::to_owned).collect(), sigs))
    }

    pub fn watched(&self) -> Arc<Watched<KeyFiles>> {
        self.held.clone()
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Key ids and public keys of the keys this replica holds.
    pub fn held(&self) -> Vec<(String, String)> {
        self.held.current().iter().map(|k| (k.key_id().to_owned(), k.public_key_hex())).collect()
    }

    pub fn active(&self) -> Arc<Vec<String>> {
        self.active.load_full()
    }

    /// Makes the first replica's keys the active set on an empty database, then reads the set.
    pub async fn bootstrap(&self, store: &Store, actor: &str) -> Result<()> {
        if store.bootstrap_signing_keys(&self.held(), actor).await? {
            tracing::info!(keys = ?self.held().iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), "no signing keys were recorded: the ones this control plane holds are now the active set");
        }
        self.refresh(store).await
    }

    /// Reads the active set again (after a key change announced by any replica).
    pub async fn refresh(&self, store: &Store) -> Result<()> {
        let active: Vec<String> = store
            .signing_keys()
            .await?
            .into_iter()
            .filter(|k| k.state == "active")
            .map(|k| k.key_id)
            .collect();
        let held = self.held();
        let missing: Vec<&String> = active.iter().filter(|id| !held.iter().any(|(h, _)| h == *id)).collect();
        if !missing.is_empty() {
            tracing::error!(
                ?missing,
                "this control plane does not hold every active signing key: it refuses to sign until its key files include them"
            );
        }
        self.active.store(Arc::new(active));
        if let Some(t) = store.latest_trust_set().await? {
            let signed = signed_statement(t.statement, t.signatures);
            self.trust.send_if_modified(|current| {
                if current.as_ref().is_some_and(|(v, _)| *v >= t.version) {
                    return false;
                }
                *current = Some((t.version, Arc::new(signed)));
                true
            });
        }
        Ok(())
    }

    /// Signs `bytes` with each of `active` (the set read in the storing transaction).
    pub fn sign_payload(&self, active: &[String], payload: &[u8]) -> Result<Vec<Signature>> {
        self.with_active(active, |keys| keys.iter().map(|k| k.sign(payload)).collect())
    }

    /// The held key `key_id`, to sign versions in use with it when it becomes active.
    pub fn signer(&self, key_id: &str) -> Result<(String, impl Fn(&[u8]) -> Signature + Send + 'static)> {
        let keys = self.held.current();
        let index = keys.iter().position(|k| k.key_id() == key_id).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "this control plane does not hold signing key {key_id}: add its file to every replica's --signing-key first"
            ))
        })?;
        let public = keys[index].public_key_hex();
        Ok((public, move |payload: &[u8]| keys[index].sign(payload)))
    }

    fn with_active<T>(&self, active: &[String], f: impl FnOnce(&[&SigningKey]) -> T) -> Result<T> {
        let held = self.held.current();
        let mut keys = Vec::with_capacity(active.len());
        let mut missing = Vec::new();
        for id in active {
            match held.iter().find(|k| k.key_id() == id) {
                Some(k) => keys.push(k),
                None => missing.push(id.as_str()),
            }
        }
        if !missing.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "this control plane does not hold active signing key(s) {}: it cannot sign until its --signing-key files include them",
                missing.join(", ")
            )));
        }
        if keys.is_empty() {
            return Err(Error::FailedPrecondition("no signing key is active yet".into()));
        }
        Ok(f(&keys))
    }

    /// A current freshness statement for `head`, signed with the active keys: the one signed
    /// before while it is younger than a quarter of the lifetime, else a new one. `None` if this
    /// replica cannot sign (logged).
    pub fn freshness(&self, head: &Head) -> Option<Arc<pb::SignedStatement>> {
        let now = unix_now();
        let active = self.active();
        let renew_after = (self.lifetime.as_secs() / 4).max(1) as i64;
        let key = (head.fleet.clone(), head.version);
        let mut statements = self.statements.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = statements.get(&key)
            && s.sha256 == head.sha256
            && s.keys == *active
            && now - s.issued < renew_after
        {
            return Some(s.signed.clone());
        }
        let statement = Freshness {
            fleet: head.fleet.clone(),
            version: head.version,
            sha256: head.sha256.clone(),
            issued: now,
            expires: now + self.lifetime.as_secs() as i64,
        };
        let signed = match self.with_active(&active, |keys| statement.sign(keys)) {
            Ok((bytes, signatures)) => Arc::new(signed_statement(bytes, signatures)),
            Err(e) => {
                tracing::error!(fleet = %head.fleet, version = head.version, error = %e, "cannot sign a freshness statement");
                return None;
            }
        };
        // Versions nobody is meant to serve any more drop out as fleets move on.
        statements.retain(|_, s| now - s.issued < 2 * self.lifetime.as_secs() as i64);
        statements.insert(
            key,
            Statement {
                sha256: head.sha256.clone(),
                issued: now,
                keys: active.to_vec(),
                signed: signed.clone(),
            },
        );
        Some(signed)
    }

    /// How often sessions send a renewed statement: a quarter of the lifetime.
    pub fn renew_every(&self) -> Duration {
        (self.lifetime / 4).max(Duration::from_millis(100))
    }
}

/// A statement and its signatures, as they travel.
pub fn signed_statement(statement: Vec<u8>, signatures: Vec<Signature>) -> pb::SignedStatement {
    pb::SignedStatement {
        statement,
        signatures: signatures
            .into_iter()
            .map(|s| pb::Signature { key_id: s.key_id, signature: s.signature })
            .collect(),
    }
}
