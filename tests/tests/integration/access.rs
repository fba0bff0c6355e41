//! The control channel as an attacker on the network would try it: TLS, data planes that may
//! speak only for themselves, operators by token or certificate with roles per fleet, refusals
//! audited under the real principal.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_bundle::access::token_sha256;
use sluice_control_plane::Security;
use sluice_control_plane::access::{Access, PolicyFile, Rpc};
use sluice_tests::*;
use sluice_tls::identity::data_plane_uri;
use sluice_tls::pki::{Authority, Leaf};
use sluice_tls::{ClientAuth, ClientFiles, ServerFiles, Watched};

const VIEWER_TOKEN: &str = "viewer-token-0123456789";

/// A control plane with TLS, client certificates from `pki/ca.crt`, and the policy in `policy`.
fn security(pki: &Path, policy: &Path, crl: Option<PathBuf>, max_stream_age: Option<Duration>) -> Security {
    let files = ServerFiles {
        cert: pki.join("control-plane.crt"),
        key: pki.join("control-plane.key"),
        client_ca: Some(pki.join("ca.crt")),
        crl,
        client_auth: ClientAuth::Optional,
        alpn: vec![b"h2".to_vec()],
    };
    Security {
        tls: Some(Watched::load("control_plane_server", files).unwrap()),
        access: Access {
            policy: Some(Watched::load("policy", PolicyFile(policy.to_owned())).unwrap()),
            anonymous: false,
            audit_every: Duration::from_millis(200),
            ..Access::anonymous()
        },
        max_stream_age,
    }
}

async fn start_cp(db: &Db, keys: &Keys, security: Security) -> ControlPlane {
    ControlPlane::start_secured(&db.url, keys.signing_key(), "127.0.0.1:0".parse().unwrap(), security).await
}

/// `sluice --server URL --fleet edge --ca-file CA --token-file TOKEN EXTRA…`, in-process.
async fn operator(url: &str, ca: &Path, token: &Path, extra: &[&str]) -> CliRun {
    let (ca, token) = (ca.to_str().unwrap(), token.to_str().unwrap());
    let base = ["--server", url, "--fleet", "edge", "--ca-file", ca, "--token-file", token];
    sluice(&[&base[..], extra].concat()).await
}

fn client_tls(pki: &Path, node: &str) -> Arc<Watched<ClientFiles>> {
    let files = ClientFiles {
        ca: pki.join("ca.crt"),
        identity: Some((
            pki.join(format!("data-plane-{node}.crt")),
            pki.join(format!("data-plane-{node}.key")),
        )),
        alpn: vec![b"h2".to_vec()],
    };
    Watched::load("data_plane_client", files).unwrap()
}

/// `sluice certs init` into `dir/pki`, plus a viewer in the policy; returns the pki dir.
async fn dev_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    let run = sluice(&["--fleet", "edge", "certs", "init", "--out", pki.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("SLUICE_TOKEN_FILE"), "{run:?}");
    let mut policy = std::fs::OpenOptions::new().append(true).open(pki.join("policy.yaml")).unwrap();
    writeln!(
        policy,
        "  - name: watcher\n    token_sha256: {}\n    roles: {{ edge: viewer }}",
        token_sha256(VIEWER_TOKEN)
    )
    .unwrap();
    std::fs::write(pki.join("viewer.token"), VIEWER_TOKEN).unwrap();
    pki
}

fn audit_rows(run: &CliRun) -> Vec<serde_json::Value> {
    let audit: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{run:?}"));
    audit["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_credentials_nothing_is_read_or_changed() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let pki = dev_pki(&dir).await;
    let security = security(&pki, &pki.join("policy.yaml"), None, None);
    let cp = start_cp(&db, &keys, security).await;
    let metrics = cp.serve_metrics().await;
    let up = Upstream::named("upstream-a").await;
    let config = dir.join("config.yaml");
    std::fs::write(&config, config_to(&up)).unwrap();
    let (ca, config) = (pki.join("ca.crt"), config.to_str().unwrap().to_owned());
    let base = ["--server", &cp.url, "--ca-file", ca.to_str().unwrap()];
    let cli = async |extra: &[&str]| sluice(&[&base[..], &["--fleet", "edge"], extra].concat()).await;
    // Calls over every fleet.
    let all = async |extra: &[&str]| sluice(&[&base[..], &["--fleet", ""], extra].concat()).await;
    let token = |name: &str| pki.join(name).to_str().unwrap().to_owned();

    // No credentials: refused, exit 7, nothing stored.
    let run = cli(&["apply", "-f", &config]).await;
    assert_eq!(run.code, 7, "{run:?}");
    assert!(run.stderr.contains("not authenticated: no credentials"), "{run:?}");
    let run = cli(&["history"]).await;
    assert_eq!(run.code, 7, "reading needs credentials too: {run:?}");

    // An https URL without a CA to check it against is a usage error; another CA, unreachable.
    let run = sluice(&["--server", &cp.url, "--fleet", "edge", "history"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let other = dir.join("other-pki");
    assert_eq!(sluice(&["certs", "init", "--out", other.to_str().unwrap()]).await.code, 0);
    let run = sluice(&[
        "--server",
        &cp.url,
        "--ca-file",
        other.join("ca.crt").to_str().unwrap(),
        "--token-file",
        &token("operator.token"),
        "history",
    ])
    .await;
    assert_eq!(run.code, 4, "a server our CA did not sign is not the control plane: {run:?}");

    // A viewer reads but cannot apply; the refusal says what is missing.
    let viewer = token("viewer.token");
    let run = cli(&["--token-file", &viewer, "apply", "-f", &config]).await;
    assert_eq!(run.code, 7, "{run:?}");
    assert!(
        run.stderr.contains(
            "ConfigService/Apply needs role operator on fleet `edge`; watcher holds role viewer there"
        ),
        "{run:?}"
    );
    assert_eq!(cli(&["--token-file", &viewer, "history"]).await.code, 0);
    // A revoked or invented token is refused without being echoed.
    std::fs::write(dir.join("forged.token"), "forged-token-value").unwrap();
    let run = cli(&["--token-file", dir.join("forged.token").to_str().unwrap(), "history"]).await;
    assert_eq!(run.code, 7, "{run:?}");
    assert!(!run.stderr.contains("forged-token-value"), "{run:?}");

    // The admin applies; what it typed as author is a description, the actor is the principal.
    let admin = token("operator.token");
    let run =
        cli(&["--token-file", &admin, "apply", "-f", &config, "--author", "mallory", "-m", "first"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let audit = cli(&["--token-file", &admin, "audit", "--action", "apply", "-o", "json"]).await;
    let rows = audit_rows(&audit);
    assert_eq!(rows[0]["actor"], "admin", "{rows:?}");
    assert_eq!(rows[0]["detail"]["described_as"], "mallory", "{rows:?}");

    // The operator certificate works too, through the policy.
    let run = cli(&["--cert", &token("operator.crt"), "--key", &token("operator.key"), "history"]).await;
    assert_eq!(run.code, 0, "{run:?}");

    // node-1 with its own certificate gets the version; node-1's certificate cannot speak for
    // node-2, and nothing it sends reaches the fleet's state.
    let dp1 = DataPlane::start_tls(
        &cp.url,
        "edge",
        "node-1",
        &keys.trusted_file,
        dir.join("n1"),
        Some(client_tls(&pki, "node-1")),
    )
    .await;
    dp1.wait_for_version(1).await;
    assert_eq!(try_get(&dp1.url()).await.unwrap(), "upstream-a");
    let forger = DataPlane::start_tls(
        &cp.url,
        "edge",
        "node-2",
        &keys.trusted_file,
        dir.join("n2"),
        Some(client_tls(&pki, "node-1")),
    )
    .await;
    let impostor = DataPlane::start_tls(
        &cp.url,
        "payments",
        "node-1",
        &keys.trusted_file,
        dir.join("n3"),
        Some(client_tls(&pki, "node-1")),
    )
    .await;
    eventually!(Duration::from_secs(10), {
        let rows = audit_rows(
            &cli(&["--token-file", &admin, "audit", "--action", "access_denied", "-o", "json"]).await,
        );
        rows.iter().any(|r| r["detail"]["reason"] == "impersonation")
    });
    assert_eq!(forger.version(), None, "the forger was given nothing");
    assert_eq!(impostor.version(), None);
    let planes = all(&["--token-file", &admin, "dataplanes", "-o", "json"]).await;
    let planes: serde_json::Value = serde_json::from_str(&planes.stdout).unwrap();
    let nodes: Vec<(&str, &str)> = planes
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["fleet"].as_str().unwrap(), p["node_id"].as_str().unwrap()))
        .collect();
    assert_eq!(nodes, [("edge", "node-1")], "only the real data plane is in the fleet state");

    // A data-plane certificate cannot call the operator API.
    let run = cli(&[
        "--cert",
        &token("data-plane-node-1.crt"),
        "--key",
        &token("data-plane-node-1.key"),
        "history",
    ])
    .await;
    assert_eq!(run.code, 7, "{run:?}");
    assert!(run.stderr.contains("a data-plane certificate cannot call ConfigService/ListHistory"), "{run:?}");

    // Plaintext and garbage to the TLS port: refused, counted, and the control plane serves on.
    let run = sluice(&["--server", &format!("http://{}", cp.addr), "--token-file", &admin, "history"]).await;
    assert_ne!(run.code, 0, "{run:?}");
    let mut junk = tokio::net::TcpStream::connect(cp.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut junk, b"\x16\x03\x01\x00\x05garbage-garbage").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut junk, &mut buf),
    )
    .await
    .expect("the control plane closes a connection that is not TLS");
    let scrape = async || reqwest_text(metrics).await;
    eventually!(Duration::from_secs(5), {
        let text = scrape().await;
        metric(&text, "sluice_cp_tls_handshake_failures_total") >= 2.0
            && metric(&text, "sluice_cp_access_denied_total{reason=\"impersonation\"}") >= 2.0
            && metric(&text, "sluice_cp_access_denied_total{reason=\"missing_role\"}") >= 1.0
            && metric(&text, "sluice_cp_access_denied_total{reason=\"no_credentials\"}") >= 2.0
            && metric(&text, "sluice_cp_access_denied_total{reason=\"unknown_token\"}") >= 1.0
    });
    let text = scrape().await;
    assert!(
        text.contains("sluice_tls_certificate_expiry_timestamp_seconds{role=\"control_plane_server\"}"),
        "{text}"
    );
    assert_eq!(cli(&["--token-file", &admin, "history"]).await.code, 0);

    // Refusals are audited under who was refused, aggregated: one row per principal, reason,
    // fleet and minute, with a count; written by a task of their own (every 200 ms here).
    let refusals = async || {
        audit_rows(&cli(&["--token-file", &admin, "audit", "--action", "access_denied", "-o", "json"]).await)
    };
    eventually!(Duration::from_secs(5), refusals().await.iter().any(|r| r["actor"] == "watcher"));
    let rows = refusals().await;
    let watcher: Vec<_> = rows.iter().filter(|r| r["actor"] == "watcher").collect();
    assert_eq!(watcher.len(), 1, "{rows:?}");
    assert_eq!(watcher[0]["detail"]["reason"], "missing_role", "{watcher:?}");
    // A viewer of edge sees only edge's rows, not the refused `payments` impostor's.
    let seen = audit_rows(&all(&["--token-file", &viewer, "audit", "-o", "json"]).await);
    assert!(!seen.is_empty() && seen.iter().all(|r| r["fleet"] == "edge"), "{seen:?}");

    for dp in [dp1, forger, impostor] {
        dp.stop().await;
    }
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_loses_its_stream_and_a_rotated_one_gets_it_back() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let ca = Authority::new("ca").unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    let server = ca
        .issue(&Leaf {
            common_name: "cp".into(),
            ips: vec!["127.0.0.1".parse().unwrap()],
            server: true,
            valid_days: 30,
            ..Leaf::default()
        })
        .unwrap();
    let node = |days| {
        let leaf = Leaf {
            common_name: "node-1".into(),
            uris: vec![data_plane_uri("sluice.local", "edge", Some("node-1"))],
            client: true,
            valid_days: days,
            ..Leaf::default()
        };
        ca.issue(&leaf).unwrap()
    };
    let first = node(30);
    write("ca.crt", &ca.cert_pem);
    write("control-plane.crt", &server.cert_pem);
    write("control-plane.key", &server.key_pem);
    write("data-plane-node-1.crt", &first.cert_pem);
    write("data-plane-node-1.key", &first.key_pem);
    write("crl.pem", &ca.crl(&[]).unwrap());
    write(
        "policy.yaml",
        &format!(
            "principals:\n  - {{name: root, token_sha256: {}, roles: {{'*': admin}}}}\n",
            token_sha256("root")
        ),
    );
    write("root.token", "root");
    let security =
        security(&dir, &dir.join("policy.yaml"), Some(dir.join("crl.pem")), Some(Duration::from_secs(1)));
    let cp = start_cp(&db, &keys, security).await;
    let up = Upstream::named("upstream-a").await;
    let (ca_file, token) = (dir.join("ca.crt"), dir.join("root.token"));
    let cli = async |extra: &[&str]| operator(&cp.url, &ca_file, &token, extra).await;
    let apply_to = async |up: &Upstream| {
        let file = dir.join(format!("config-{}.yaml", fastrand::u32(..)));
        std::fs::write(&file, config_to(up)).unwrap();
        cli(&["apply", "-f", file.to_str().unwrap()]).await
    };
    assert_eq!(apply_to(&up).await.code, 0);
    let tls = client_tls(&dir, "node-1");
    let dp = DataPlane::start_tls(
        &cp.url,
        "edge",
        "node-1",
        &keys.trusted_file,
        dir.join("n1"),
        Some(tls.clone()),
    )
    .await;
    dp.wait_for_version(1).await;

    // Revoked: the next handshake fails, and the stream ends at its maximum age (1 s here).
    write("crl.pem", &ca.crl(&[&first]).unwrap());
    cp.reload();
    let connected = async || {
        let planes = cli(&["dataplanes", "-o", "json"]).await;
        let planes: serde_json::Value = serde_json::from_str(&planes.stdout).unwrap();
        planes[0]["connected"].as_bool().unwrap_or(false)
    };
    eventually!(Duration::from_secs(10), !connected().await);
    let b = Upstream::named("upstream-b").await;
    assert_eq!(apply_to(&b).await.code, 0);
    stays_for!(
        Duration::from_millis(1500),
        dp.version() == Some(1),
        "a revoked data plane is sent nothing new"
    );
    assert_eq!(dp.version(), Some(1), "a revoked data plane is sent nothing new");
    assert_eq!(try_get(&dp.url()).await.unwrap(), "upstream-a", "and keeps serving the last good config");

    // A new certificate on disk is picked up without a restart, and the stream comes back.
    let second = node(30);
    write("data-plane-node-1.crt", &second.cert_pem);
    write("data-plane-node-1.key", &second.key_pem);
    assert!(sluice_tls::Reload::check(&*tls), "the data plane took the rotated certificate");
    dp.wait_for_version(2).await;
    assert_eq!(try_get(&dp.url()).await.unwrap(), "upstream-b");
    dp.stop().await;
    cp.stop().await;
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// GET /metrics on the control plane's metrics listener.
async fn reqwest_text(addr: std::net::SocketAddr) -> String {
    try_get(&format!("http://{addr}/metrics")).await.unwrap_or_default()
}

/// PostgreSQL that accepts only TLS, with a certificate from our own CA: the control plane
/// connects with `sslmode=verify-full` and works; with TLS turned off it is refused, clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_reaches_postgresql_over_verified_tls() {
    let dir = temp_dir().join("pg-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Authority::new("database CA").unwrap();
    let server = ca
        .issue(&Leaf {
            common_name: "127.0.0.1".into(),
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            server: true,
            valid_days: 30,
            ..Leaf::default()
        })
        .unwrap();
    std::fs::write(dir.join("server.crt"), &server.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &server.key_pem).unwrap();
    std::fs::set_permissions(dir.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    let ca_file = dir.parent().unwrap().join("db-ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let conf = [
        "ssl = on".to_owned(),
        format!("ssl_cert_file = '{}'", dir.join("server.crt").display()),
        format!("ssl_key_file = '{}'", dir.join("server.key").display()),
    ];
    let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
    let hba = ["hostnossl all all 0.0.0.0/0 reject", "hostssl all all 127.0.0.1/32 trust"];
    let cluster = match sluice_tests::pg::Cluster::ensure(&dir, &conf, &hba) {
        Ok(c) => c,
        Err(e) => panic!("this test starts its own PostgreSQL (server binaries needed): {e}"),
    };
    let work = dir.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let keys = Keys::generate(&work);
    let verified = format!("{}?sslmode=verify-full&sslrootcert={}", cluster.url(), ca_file.display());
    let cp = ControlPlane::start(&verified, keys.signing_key()).await;
    let up = Upstream::named("upstream-a").await;
    let run = apply(&cp, "edge", &config_to(&up), &work, "over TLS").await;
    assert_eq!(run.code, 0, "{run:?}");
    cp.stop().await;

    // A server certificate our CA did not sign is not our database.
    let other = dir.parent().unwrap().join("other-ca.crt");
    std::fs::write(&other, Authority::new("someone else").unwrap().cert_pem).unwrap();
    let spoofed = format!("{}?sslmode=verify-full&sslrootcert={}", cluster.url(), other.display());
    let refused = sluice_control_plane::store::Store::connect(&spoofed, Duration::from_secs(3)).await;
    assert!(refused.is_err(), "verify-full must check the server's certificate");

    // Without TLS the server refuses the connection, and the control plane says so at once.
    let plain = format!("{}?sslmode=disable", cluster.url());
    let refused = sluice_control_plane::store::Store::connect(&plain, Duration::from_secs(3)).await;
    let Err(err) = refused else { panic!("a non-TLS connection is rejected") };
    let err = err.to_string();
    assert!(err.contains("no encryption") || err.contains("pg_hba.conf rejects"), "{err}");
    cluster.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Calls `rpc` on the fleet `edge` with `token`: the status code, `Ok` when the call got past
/// authorization (it may still fail for other reasons, such as a missing version).
async fn call(url: &str, rpc: Rpc, token: Option<&str>) -> tonic::Code {
    use sluice_proto::v1 as pb;
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
    fn with<T>(token: Option<&str>, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }
    let mut c = sluice_proto::v1::config_service_client::ConfigServiceClient::new(channel.clone());
    let fleet = || "edge".to_owned();
    let code = |r: Result<(), tonic::Status>| r.err().map_or(tonic::Code::Ok, |s| s.code());
    match rpc {
        Rpc::Validate => code(c.validate(with(token, pb::ValidateRequest::default())).await.map(drop)),
        Rpc::Diff => code(
            c.diff(with(token, pb::DiffRequest { fleet: fleet(), ..Default::default() })).await.map(drop),
        ),
        Rpc::Apply => code(
            c.apply(with(token, pb::ApplyRequest { fleet: fleet(), ..Default::default() })).await.map(drop),
        ),
        Rpc::GetVersion => code(
            c.get_version(with(token, pb::GetVersionRequest { fleet: fleet(), version: None }))
                .await
                .map(drop),
        ),
        Rpc::ListHistory => code(
            c.list_history(with(token, pb::ListHistoryRequest { fleet: fleet(), limit: 1 })).await.map(drop),
        ),
        Rpc::Rollback => code(
            c.rollback(with(
                token,
                pb::RollbackRequest { fleet: fleet(), to_version: 9, ..Default::default() },
            ))
            .await
            .map(drop),
        ),
        Rpc::ListDataPlanes => code(
            c.list_data_planes(with(token, pb::ListDataPlanesRequest { fleet: fleet() })).await.map(drop),
        ),
        Rpc::ListAudit => code(
            c.list_audit(with(token, pb::ListAuditRequest { fleet: fleet(), ..Default::default() }))
                .await
                .map(drop),
        ),
        Rpc::GetRollout => {
            code(c.get_rollout(with(token, pb::GetRolloutRequest { fleet: fleet() })).await.map(drop))
        }
        Rpc::RolloutAction => code(
            c.rollout_action(with(
                token,
                pb::RolloutActionRequest { fleet: fleet(), action: "pause".into(), actor: String::new() },
            ))
            .await
            .map(drop),
        ),
        Rpc::SetDefaultStrategy => code(
            c.set_default_strategy(with(
                token,
                pb::SetDefaultStrategyRequest { fleet: fleet(), ..Default::default() },
            ))
            .await
            .map(drop),
        ),
        Rpc::GetDefaultStrategy => code(
            c.get_default_strategy(with(token, pb::GetDefaultStrategyRequest { fleet: fleet() }))
                .await
                .map(drop),
        ),
        Rpc::GetTrafficReport => code(
            c.get_traffic_report(with(
                token,
                pb::TrafficReportRequest { fleet: fleet(), route: String::new() },
            ))
            .await
            .map(drop),
        ),
        Rpc::ListSigningKeys => {
            code(c.list_signing_keys(with(token, pb::ListSigningKeysRequest {})).await.map(drop))
        }
        // An unknown key: past authorization, it fails as not held.
        Rpc::ActivateSigningKey => code(
            c.activate_signing_key(with(token, pb::SigningKeyRequest { key_id: "0000".into() }))
                .await
                .map(drop),
        ),
        Rpc::RetireSigningKey => code(
            c.retire_signing_key(with(token, pb::SigningKeyRequest { key_id: "0000".into() }))
                .await
                .map(drop),
        ),
        Rpc::GetTrustSet => code(c.get_trust_set(with(token, pb::GetTrustSetRequest {})).await.map(drop)),
        // Unsigned: past authorization, it is refused as such.
        Rpc::PublishTrustSet => {
            code(c.publish_trust_set(with(token, pb::PublishTrustSetRequest::default())).await.map(drop))
        }
        Rpc::PurgeCache => code(
            c.purge_cache(with(
                token,
                pb::PurgeCacheRequest {
                    fleet: fleet(),
                    route: "r".into(),
                    timeout_ms: 1,
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        ),
        Rpc::Stream => {
            let hello = pb::Hello { node_id: "n1".into(), fleet: fleet(), ..Default::default() };
            let first = pb::DataPlaneMessage { kind: Some(pb::data_plane_message::Kind::Hello(hello)) };
            let mut dp = sluice_proto::v1::data_plane_service_client::DataPlaneServiceClient::new(channel);
            code(dp.stream(with(token, tokio_stream::iter(vec![first]))).await.map(drop))
        }
    }
}

/// Walks the permission table over the wire: every RPC, refused without credentials, refused to
/// a role too small or on another fleet, and let through with the role it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_guarded_as_the_permission_table_says() {
    use sluice_bundle::access::Role;
    use sluice_control_plane::access::Need;
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    // Roles on every fleet, an admin of `edge` only, and an admin of another fleet.
    let policy = ["viewer", "operator", "admin", "edge-admin", "other"]
        .iter()
        .map(|name| {
            let (fleet, role) = match *name {
                "other" => ("payments", "admin"),
                "edge-admin" => ("edge", "admin"),
                role => ("'*'", role),
            };
            format!(
                "  - {{name: {name}, token_sha256: {}, roles: {{{fleet}: {role}}}}}\n",
                token_sha256(name)
            )
        })
        .collect::<String>();
    std::fs::write(dir.join("policy.yaml"), format!("principals:\n{policy}")).unwrap();
    let security = Security {
        tls: None,
        access: Access {
            policy: Some(Watched::load("policy", PolicyFile(dir.join("policy.yaml"))).unwrap()),
            anonymous: false,
            ..Access::anonymous()
        },
        max_stream_age: None,
    };
    let cp = start_cp(&db, &keys, security).await;
    use tonic::Code::{PermissionDenied, Unauthenticated};
    let passed = |c: tonic::Code| c != PermissionDenied && c != Unauthenticated;
    for rpc in Rpc::ALL {
        assert_eq!(call(&cp.url, rpc, None).await, Unauthenticated, "{rpc:?} without credentials");
        assert_eq!(call(&cp.url, rpc, Some("forged")).await, Unauthenticated, "{rpc:?} with a forged token");
        let other = call(&cp.url, rpc, Some("other")).await;
        let fleetless = [Rpc::Validate, Rpc::ListSigningKeys, Rpc::GetTrustSet].contains(&rpc);
        // Signing keys sign for every fleet: changing them takes admin of `*`.
        let every_fleet =
            [Rpc::ActivateSigningKey, Rpc::RetireSigningKey, Rpc::PublishTrustSet].contains(&rpc);
        match rpc.need() {
            // These name no fleet: a role anywhere will do.
            Need::Role(_) if fleetless => assert!(passed(other), "{rpc:?}: {other:?}"),
            _ => assert_eq!(other, PermissionDenied, "{rpc:?} by an admin of another fleet"),
        }
        let edge_admin = call(&cp.url, rpc, Some("edge-admin")).await;
        match rpc.need() {
            Need::Role(_) if every_fleet => {
                assert_eq!(edge_admin, PermissionDenied, "{rpc:?} by an admin of one fleet")
            }
            Need::Role(_) => assert!(passed(edge_admin), "{rpc:?} by edge's admin: {edge_admin:?}"),
            Need::DataPlane => assert_eq!(edge_admin, PermissionDenied, "an operator is no data plane"),
        }
        match rpc.need() {
            Need::Role(role) => {
                for (token, has) in
                    [("viewer", Role::Viewer), ("operator", Role::Operator), ("admin", Role::Admin)]
                {
                    let got = call(&cp.url, rpc, Some(token)).await;
                    if has >= role {
                        assert!(passed(got), "{rpc:?} by {token}: {got:?}");
                    } else {
                        assert_eq!(got, PermissionDenied, "{rpc:?} by {token}");
                    }
                }
            }
            Need::DataPlane => {
                assert_eq!(
                    call(&cp.url, rpc, Some("admin")).await,
                    PermissionDenied,
                    "an operator is no data plane"
                );
            }
        }
    }
    cp.stop().await;
}

/// The control plane's certificate rotated on disk: new handshakes get the new one (its expiry is
/// what `/metrics` reports), and a data plane's open stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_server_certificate_is_served_without_dropping_streams() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let pki = dev_pki(&dir).await;
    let cp = start_cp(&db, &keys, security(&pki, &pki.join("policy.yaml"), None, None)).await;
    let metrics = cp.serve_metrics().await;
    let up = Upstream::named("upstream-a").await;
    let (ca, token) = (pki.join("ca.crt"), pki.join("operator.token"));
    let cli = async |extra: &[&str]| operator(&cp.url, &ca, &token, extra).await;
    let file = dir.join("config.yaml");
    std::fs::write(&file, config_to(&up)).unwrap();
    assert_eq!(cli(&["apply", "-f", file.to_str().unwrap()]).await.code, 0);
    let dp = DataPlane::start_tls(
        &cp.url,
        "edge",
        "node-1",
        &keys.trusted_file,
        dir.join("n1"),
        Some(client_tls(&pki, "node-1")),
    )
    .await;
    dp.wait_for_version(1).await;
    let expiry = async || {
        let text = reqwest_text(metrics).await;
        metric(&text, "sluice_tls_certificate_expiry_timestamp_seconds{role=\"control_plane_server\"}")
    };
    let before = expiry().await;
    assert!(before > 0.0);

    // A new certificate from the same CA, valid far longer, swapped in while the stream is open.
    let read = |name: &str| std::fs::read_to_string(pki.join(name)).unwrap();
    let ca = Authority::from_pem(&read("ca.crt"), &read("ca.key")).unwrap();
    let rotated = ca
        .issue(&Leaf {
            common_name: "sluice-control-plane".into(),
            ips: vec!["127.0.0.1".parse().unwrap()],
            server: true,
            valid_days: 900,
            ..Leaf::default()
        })
        .unwrap();
    std::fs::write(pki.join("control-plane.crt"), &rotated.cert_pem).unwrap();
    std::fs::write(pki.join("control-plane.key"), &rotated.key_pem).unwrap();
    cp.reload();
    assert!(expiry().await > before + 100.0 * 86_400.0, "the new certificate is the one in use");
    assert_eq!(cli(&["history"]).await.code, 0, "new connections handshake with it");

    let b = Upstream::named("upstream-b").await;
    std::fs::write(&file, config_to(&b)).unwrap();
    assert_eq!(cli(&["apply", "-f", file.to_str().unwrap()]).await.code, 0);
    dp.wait_for_version(2).await;
    eventually!(Duration::from_secs(10), {
        cli(&["dataplanes", "-o", "json"]).await.stdout.contains("\"SYNCED\"")
    });
    dp.stop().await;
    cp.stop().await;
}
