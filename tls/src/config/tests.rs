use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::Identity;
use crate::identity::data_plane_uri;
use crate::pki::{Authority, Issued, Leaf};

/// Files in memory, named like files.
fn contents(files: &[(&str, &str)]) -> Contents {
    Contents::from_memory(files.iter().map(|(p, t)| (PathBuf::from(p), t.as_bytes().to_vec())).collect())
}

fn server(ca: &Authority, crl: Option<String>) -> (ServerConfig, CertInfo) {
    let leaf = ca
        .issue(&Leaf {
            common_name: "cp".into(),
            dns: vec!["localhost".into()],
            server: true,
            valid_days: 30,
            ..Leaf::default()
        })
        .unwrap();
    let files = ServerFiles {
        cert: "s.crt".into(),
        key: "s.key".into(),
        client_ca: Some("ca.crt".into()),
        crl: crl.as_ref().map(|_| "crl.pem".into()),
        client_auth: ClientAuth::Required,
        alpn: vec![b"h2".to_vec()],
    };
    let crl = crl.unwrap_or_default();
    server_config(
        &files,
        &contents(&[
            ("s.crt", &leaf.cert_pem),
            ("s.key", &leaf.key_pem),
            ("ca.crt", &ca.cert_pem),
            ("crl.pem", &crl),
        ]),
    )
    .unwrap()
}

fn client(trusted: &Authority, me: Option<&Issued>) -> ClientConfig {
    let files = ClientFiles {
        ca: "ca.crt".into(),
        identity: me.map(|_| ("c.crt".into(), "c.key".into())),
        alpn: vec![b"h2".to_vec()],
    };
    let (cert, key) = me.map_or((String::new(), String::new()), |m| (m.cert_pem.clone(), m.key_pem.clone()));
    client_config(&files, &contents(&[("ca.crt", &trusted.cert_pem), ("c.crt", &cert), ("c.key", &key)]))
        .unwrap()
        .0
}

/// Whether an error says `what`, however rustls spells it (`UnknownIssuer`, `unknown issuer`).
fn says(err: &str, what: &str) -> bool {
    err.to_lowercase().replace(' ', "").contains(&what.replace(' ', ""))
}

fn data_plane(ca: &Authority, node: &str, days: i64) -> Issued {
    ca.issue(&Leaf {
        common_name: node.into(),
        uris: vec![data_plane_uri("sluice.local", "edge", Some(node))],
        client: true,
        valid_days: days,
        ..Leaf::default()
    })
    .unwrap()
}

/// Runs one handshake over an in-memory pipe: the identity the server saw, or why it failed.
async fn handshake(server: ServerConfig, client: ClientConfig) -> Result<Identity, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let serve = tokio::spawn(async move {
        let mut tls = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let peer = conn.peer_certificates().ok_or("no client certificate")?[0].clone();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let info = CertInfo::parse(&peer)?;
        Identity::from_uris(&info.uris, "sluice.local")
    });
    let name = ServerName::try_from("localhost").unwrap();
    let sent = async {
        let mut tls = connector.connect(name, a).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        Ok::<_, std::io::Error>(tls)
    }
    .await;
    let seen = serve.await.unwrap();
    drop(sent);
    seen
}

#[tokio::test]
async fn a_client_certificate_from_the_ca_names_its_data_plane() {
    let ca = Authority::new("ca").unwrap();
    let (server_cfg, info) = server(&ca, None);
    assert_eq!(info.dns, vec!["localhost".to_owned()]);
    let me = data_plane(&ca, "node-1", 30);
    let seen = handshake(server_cfg, client(&ca, Some(&me))).await;
    assert_eq!(seen, Ok(Identity::DataPlane { fleet: "edge".into(), node: Some("node-1".into()) }));
}

#[tokio::test]
async fn foreign_expired_revoked_and_missing_client_certificates_are_refused() {
    let ca = Authority::new("ca").unwrap();
    let other = Authority::new("other").unwrap();

    let foreign = data_plane(&other, "node-1", 30);
    let err = handshake(server(&ca, None).0, client(&ca, Some(&foreign))).await.unwrap_err();
    assert!(says(&err, "unknown issuer"), "{err}");

    let expired = data_plane(&ca, "node-1", -1);
    let err = handshake(server(&ca, None).0, client(&ca, Some(&expired))).await.unwrap_err();
    assert!(says(&err, "expired"), "{err}");

    let revoked = data_plane(&ca, "node-1", 30);
    let kept = data_plane(&ca, "node-2", 30);
    let crl = ca.crl(&[&revoked]).unwrap();
    let err = handshake(server(&ca, Some(crl.clone())).0, client(&ca, Some(&revoked))).await.unwrap_err();
    assert!(says(&err, "revoked"), "{err}");
    assert!(handshake(server(&ca, Some(crl)).0, client(&ca, Some(&kept))).await.is_ok(), "others still pass");

    let err = handshake(server(&ca, None).0, client(&ca, None)).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn a_client_refuses_a_server_its_ca_did_not_sign() {
    let ca = Authority::new("ca").unwrap();
    let other = Authority::new("other").unwrap();
    let me = data_plane(&ca, "node-1", 30);
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server(&ca, None).0));
    tokio::spawn(async move { acceptor.accept(b).await.map(drop) });
    let connector = TlsConnector::from(Arc::new(client(&other, Some(&me))));
    let err = connector.connect(ServerName::try_from("localhost").unwrap(), a).await.unwrap_err();
    assert!(says(&err.to_string(), "unknown issuer"), "{err}");
}
