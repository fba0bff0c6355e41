use sluice_bundle::access::token_sha256;
use sluice_tls::pki::{Authority, Leaf};
use sluice_tls::rustls::pki_types::pem::PemObject;

use super::*;

const TD: &str = "sluice.local";

fn access(policy: &str, fleet_scoped: bool) -> Access {
    let path =
        std::env::temp_dir().join(format!("sluice-policy-{}-{}.yaml", std::process::id(), fastrand::u64(..)));
    std::fs::write(&path, policy).unwrap();
    let policy = Watched::load("policy", PolicyFile(path.clone())).unwrap();
    let _ = std::fs::remove_file(path);
    Access {
        trust_domain: TD.into(),
        fleet_scoped,
        policy: Some(policy),
        anonymous: false,
        denials: Denials::default(),
        audit_every: AUDIT_EVERY,
    }
}

fn policy() -> String {
    format!(
        "principals:\n\
         \x20 - {{name: viewer, token_sha256: {}, roles: {{'*': viewer}}}}\n\
         \x20 - {{name: edge-op, token_sha256: {}, roles: {{edge: operator}}}}\n\
         \x20 - {{name: root, token_sha256: {}, roles: {{'*': admin}}}}\n\
         \x20 - {{name: bot, certificate: 'spiffe://sluice.local/operator/bot', roles: {{edge: admin}}}}\n",
        token_sha256("t-viewer"),
        token_sha256("t-edge-op"),
        token_sha256("t-root"),
    )
}

fn bearer(token: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert("authorization", format!("Bearer {token}").parse().unwrap());
    m
}

fn cert(uris: &[String]) -> CertificateDer<'static> {
    let ca = Authority::new("ca").unwrap();
    let leaf = ca.issue(&Leaf {
        common_name: "x".into(),
        uris: uris.to_vec(),
        client: true,
        valid_days: 1,
        ..Leaf::default()
    });
    CertificateDer::from_pem_slice(leaf.unwrap().cert_pem.as_bytes()).unwrap()
}

#[test]
fn tokens_name_operators_and_unknown_ones_are_refused_without_echoing_them() {
    let a = access(&policy(), false);
    let caller = a.authenticate(&bearer("t-edge-op"), None).unwrap();
    assert_eq!(caller.principal(), "edge-op");
    let r = a.authenticate(&bearer("stolen-or-revoked"), None).unwrap_err();
    assert!(r.unauthenticated && !r.message.contains("stolen"), "{r:?}");
    let r = a.authenticate(&MetadataMap::new(), None).unwrap_err();
    assert_eq!(r.reason, "no_credentials");
    let mut basic = MetadataMap::new();
    basic.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(a.authenticate(&basic, None).unwrap_err().reason, "bad_token");
}

/// Walks the permission table: each role against each RPC, on its fleet and another.
#[test]
fn the_permission_table_holds_for_every_rpc_and_role() {
    let a = access(&policy(), false);
    let who = |t: &str| a.authenticate(&bearer(t), None).unwrap();
    let (viewer, edge_op, root) = (who("t-viewer"), who("t-edge-op"), who("t-root"));
    for rpc in Rpc::ALL {
        match rpc.need() {
            Need::Role(Role::Viewer) => {
                assert!(a.authorize(&viewer, rpc, "edge", None).is_ok(), "{rpc:?}");
                assert!(a.authorize(&edge_op, rpc, "edge", None).is_ok(), "{rpc:?}");
                assert!(a.authorize(&edge_op, rpc, "payments", None).is_err(), "{rpc:?} elsewhere");
            }
            Need::Role(Role::Operator) => {
                let r = a.authorize(&viewer, rpc, "edge", None).unwrap_err();
                assert_eq!(
                    r.message,
                    format!(
                        "{} needs role operator on fleet `edge`; viewer holds role viewer there",
                        rpc.name()
                    )
                );
                assert!(a.authorize(&edge_op, rpc, "edge", None).is_ok(), "{rpc:?}");
                assert!(a.authorize(&edge_op, rpc, "payments", None).is_err(), "{rpc:?}");
            }
            Need::Role(Role::Admin) => {
                assert!(a.authorize(&edge_op, rpc, "edge", None).is_err(), "{rpc:?}");
                assert!(a.authorize(&root, rpc, "edge", None).is_ok(), "{rpc:?}");
            }
            Need::DataPlane => {
                let r = a.authorize(&root, rpc, "edge", Some("n1")).unwrap_err();
                assert_eq!(r.reason, "wrong_service");
            }
        }
        if rpc.need() != Need::DataPlane {
            assert!(a.authorize(&root, rpc, "anything", None).is_ok(), "admin everywhere: {rpc:?}");
        }
    }
}

#[test]
fn a_data_plane_certificate_speaks_for_its_own_node_only() {
    let a = access(&policy(), false);
    let der = cert(&[sluice_tls::identity::data_plane_uri(TD, "edge", Some("node-1"))]);
    let dp = a.authenticate(&MetadataMap::new(), Some(std::slice::from_ref(&der))).unwrap();
    assert!(a.authorize(&dp, Rpc::Stream, "edge", Some("node-1")).is_ok());
    for (fleet, node) in [("edge", "node-2"), ("payments", "node-1")] {
        let r = a.authorize(&dp, Rpc::Stream, fleet, Some(node)).unwrap_err();
        assert_eq!(r.reason, "impersonation", "{fleet}/{node}");
    }
    // A token does not turn a data plane's connection into an operator's.
    let dp = a.authenticate(&bearer("t-root"), Some(std::slice::from_ref(&der))).unwrap();
    assert_eq!(a.authorize(&dp, Rpc::Apply, "edge", None).unwrap_err().reason, "wrong_service");
}

#[test]
fn fleet_scoped_certificates_only_when_allowed_and_never_across_fleets() {
    let der = cert(&[sluice_tls::identity::data_plane_uri(TD, "edge", None)]);
    let strict = access(&policy(), false);
    let r = strict.authenticate(&MetadataMap::new(), Some(std::slice::from_ref(&der))).unwrap_err();
    assert_eq!(r.reason, "fleet_scoped_certificate");
    let lax = access(&policy(), true);
    let dp = lax.authenticate(&MetadataMap::new(), Some(std::slice::from_ref(&der))).unwrap();
    assert!(lax.authorize(&dp, Rpc::Stream, "edge", Some("any-node")).is_ok());
    assert!(lax.authorize(&dp, Rpc::Stream, "payments", Some("any-node")).is_err());
}

#[test]
fn operator_certificates_map_through_the_policy_and_tokens_win() {
    let a = access(&policy(), false);
    let bot = cert(&[sluice_tls::identity::operator_uri(TD, "bot")]);
    let caller = a.authenticate(&MetadataMap::new(), Some(std::slice::from_ref(&bot))).unwrap();
    assert_eq!(caller.principal(), "bot");
    assert!(a.authorize(&caller, Rpc::SetDefaultStrategy, "edge", None).is_ok());
    let with_token = a.authenticate(&bearer("t-viewer"), Some(std::slice::from_ref(&bot))).unwrap();
    assert_eq!(with_token.principal(), "viewer", "the token wins");
    let stranger = cert(&[sluice_tls::identity::operator_uri(TD, "mallory")]);
    let r = a.authenticate(&MetadataMap::new(), Some(std::slice::from_ref(&stranger))).unwrap_err();
    assert_eq!(r.reason, "unknown_certificate");
    let foreign = cert(&[sluice_tls::identity::operator_uri("other.domain", "bot")]);
    assert_eq!(a.authenticate(&MetadataMap::new(), Some(&[foreign])).unwrap_err().reason, "bad_certificate");
}

#[test]
fn refusals_are_aggregated_per_principal_reason_and_fleet() {
    let a = access(&policy(), false);
    let viewer = a.authenticate(&bearer("t-viewer"), None).unwrap();
    for _ in 0..50 {
        let r = a.authorize(&viewer, Rpc::Apply, "edge", None).unwrap_err();
        a.refused(Rpc::Apply.name(), &r);
    }
    let r = a.authorize(&viewer, Rpc::Apply, "payments", None).unwrap_err();
    a.refused(Rpc::Apply.name(), &r);
    let rows = a.denials.take();
    assert_eq!(rows.len(), 2);
    let first = &rows[0];
    assert_eq!(
        (first.who.as_str(), first.reason, first.fleet.as_str(), first.count),
        ("viewer", "missing_role", "edge", 50)
    );
    assert!(a.denials.take().is_empty(), "taken once");
    assert_eq!(a.denials.counts()["missing_role"], 51);
    for i in 0..2000 {
        a.refused(
            Rpc::Apply.name(),
            &Refusal::unauthenticated(format!("who-{i}"), "unknown_token", "x".into()),
        );
    }
    let rows = a.denials.take();
    assert_eq!(rows.len(), MAX_PENDING + 1, "bounded, the rest folded into one row");
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 2000);
}
