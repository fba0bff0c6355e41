//! The control plane's access policy: who the operators are and what each may do, per fleet.
//!
//! ```yaml
//! principals:
//!   - name: alice                      # what the audit trail records
//!     token_sha256: 9f86d081…          # SHA-256 of the bearer token, hex; never the token
//!     roles: { "*": viewer, payments: admin }
//!   - name: deploy-bot
//!     certificate: spiffe://sluice.local/operator/deploy-bot   # a URI SAN of its client cert
//!     roles: { payments: operator }
//! ```
//!
//! Roles are ordered: `viewer` (read), `operator` (change: apply, rollback, rollout actions),
//! `admin` (everything, such as default strategies). `*` names every fleet; a principal's role on
//! a fleet is the higher of its role there and its `*` role.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{ConfigError, ConfigErrors};

/// What a principal may do on a fleet; each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

/// How an operator proves who they are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// The lowercase hex SHA-256 of a bearer token.
    TokenSha256(String),
    /// A URI SAN of a client certificate the control plane's client CA verifies.
    Certificate(String),
}

/// One operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub credential: Credential,
    /// By fleet name, `*` for every fleet.
    pub roles: BTreeMap<String, Role>,
}

/// A parsed, checked policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub principals: Vec<Principal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    principals: Vec<RawPrincipal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    #[serde(default)]
    name: String,
    token_sha256: Option<String>,
    certificate: Option<String>,
    #[serde(default)]
    roles: BTreeMap<String, String>,
}

/// The role `roles` give on `fleet`: the higher of the fleet's own and `*`.
pub fn role_on(roles: &BTreeMap<String, Role>, fleet: &str) -> Option<Role> {
    roles.get(fleet).copied().max(roles.get("*").copied())
}

/// The SHA-256 of a token, as the policy stores it.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

// === impl Role ===

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Principal ===

impl Principal {
    /// Its role on `fleet`: the higher of the fleet's own and `*`.
    pub fn role_on(&self, fleet: &str) -> Option<Role> {
        role_on(&self.roles, fleet)
    }

    /// Whether it may do what `role` allows on `fleet`.
    pub fn may(&self, role: Role, fleet: &str) -> bool {
        self.role_on(fleet).is_some_and(|r| r >= role)
    }
}

// === impl Policy ===

impl Policy {
    /// Parses and checks a policy file, reporting every problem with its path.
    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        let raw: RawPolicy = serde_saphyr::from_str(text)
            .map_err(|e| ConfigErrors::single("", format!("not a policy file: {e}")))?;
        let mut errors = Vec::new();
        let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
        let (mut names, mut credentials) = (HashSet::new(), HashSet::new());
        let mut principals = Vec::new();
        for (i, p) in raw.principals.into_iter().enumerate() {
            let at = format!("principals[{i}]");
            if p.name.is_empty() || !p.name.bytes().all(|b| b.is_ascii_graphic()) {
                err(format!("{at}.name"), "a name is required: printable characters, no spaces".into());
            } else if !names.insert(p.name.clone()) {
                err(format!("{at}.name"), format!("`{}` is named twice", p.name));
            }
            let credential = match (p.token_sha256, p.certificate) {
                (Some(t), None) => {
                    let t = t.to_ascii_lowercase();
                    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                        err(
                            format!("{at}.token_sha256"),
                            "want the token's SHA-256 as 64 hex digits (`sluice certs init` prints it), \
                             never the token itself"
                                .into(),
                        );
                    }
                    Some(Credential::TokenSha256(t))
                }
                (None, Some(c)) => {
                    if c.is_empty() || c.contains(char::is_whitespace) {
                        err(
                            format!("{at}.certificate"),
                            "want a URI SAN such as spiffe://…/operator/NAME".into(),
                        );
                    }
                    Some(Credential::Certificate(c))
                }
                _ => {
                    err(at.clone(), "give exactly one of token_sha256 and certificate".into());
                    None
                }
            };
            if let Some(c) = &credential
                && !credentials.insert(c.clone())
            {
                err(at.clone(), "the same credential is given to another principal".into());
            }
            let mut roles = BTreeMap::new();
            for (fleet, role) in p.roles {
                match Role::parse(&role) {
                    Some(r) => {
                        roles.insert(fleet, r);
                    }
                    None => err(
                        format!("{at}.roles.{fleet}"),
                        format!("unknown role `{role}`; the roles are viewer, operator, admin"),
                    ),
                }
            }
            if let Some(credential) = credential {
                principals.push(Principal { name: p.name, credential, roles });
            }
        }
        if errors.is_empty() { Ok(Self { principals }) } else { Err(ConfigErrors(errors)) }
    }

    /// The principal a bearer token belongs to.
    pub fn by_token(&self, token: &str) -> Option<&Principal> {
        let hash = token_sha256(token);
        self.principals.iter().find(|p| p.credential == Credential::TokenSha256(hash.clone()))
    }

    /// The principal a certificate URI SAN belongs to.
    pub fn by_certificate(&self, san: &str) -> Option<&Principal> {
        self.principals.iter().find(|p| matches!(&p.credential, Credential::Certificate(c) if c == san))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_fleet_with_a_wildcard() {
        let token = "s3cret-token";
        let text = format!(
            "principals:\n  - name: alice\n    token_sha256: {}\n    roles: {{ '*': viewer, payments: admin }}\n\
             \x20 - name: bot\n    certificate: spiffe://sluice.local/operator/bot\n    roles: {{ edge: operator }}\n",
            token_sha256(token)
        );
        let policy = Policy::parse(&text).unwrap();
        let alice = policy.by_token(token).unwrap();
        assert_eq!(alice.name, "alice");
        assert!(alice.may(Role::Admin, "payments"));
        assert!(alice.may(Role::Viewer, "edge"));
        assert!(!alice.may(Role::Operator, "edge"));
        assert!(policy.by_token("s3cret-token2").is_none());
        let bot = policy.by_certificate("spiffe://sluice.local/operator/bot").unwrap();
        assert!(bot.may(Role::Operator, "edge") && !bot.may(Role::Admin, "edge"));
        assert!(!bot.may(Role::Viewer, "payments"));
        assert!(policy.by_certificate("spiffe://sluice.local/operator/bob").is_none());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = "principals:\n  - name: a\n    token_sha256: plaintext-token\n    roles: { x: root }\n\
                    \x20 - name: a\n    roles: {}\n";
        let errors = Policy::parse(text).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["principals[0].token_sha256", "principals[0].roles.x", "principals[1].name", "principals[1]"]
        );
        assert!(Policy::parse("principals: [{name: a, tokn: x}]").is_err(), "unknown fields are refused");
    }
}
