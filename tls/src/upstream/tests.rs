use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::pki::{Authority, Issued, Leaf};
use crate::{ClientAuth, ServerFiles, server_config};

fn contents(files: &[(&str, &str)]) -> Contents {
    Contents::from_memory(files.iter().map(|(p, t)| (PathBuf::from(p), t.as_bytes().to_vec())).collect())
}

fn leaf(ca: &Authority, dns: &str, client: bool) -> Issued {
    ca.issue(&Leaf {
        common_name: dns.into(),
        dns: vec![dns.into()],
        server: !client,
        client,
        valid_days: 30,
        ..Leaf::default()
    })
    .unwrap()
}

/// An endpoint serving `cert`, asking for client certificates from `client_ca` if given.
fn endpoint(cert: &Issued, client_ca: Option<&Authority>) -> ServerConfig {
    let files = ServerFiles {
        cert: "s.crt".into(),
        key: "s.key".into(),
        client_ca: client_ca.map(|_| "ca.crt".into()),
        crl: None,
        client_auth: if client_ca.is_some() { ClientAuth::Required } else { ClientAuth::Off },
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    let ca = client_ca.map(|c| c.cert_pem.clone()).unwrap_or_default();
    server_config(&files, &contents(&[("s.crt", &cert.cert_pem), ("s.key", &cert.key_pem), ("ca.crt", &ca)]))
        .unwrap()
        .0
}

/// What a pool with these settings builds, from files in memory.
fn pool(ca: Option<&Authority>, me: Option<&Issued>, verify: bool) -> Result<ClientConfig, TlsError> {
    let files = UpstreamFiles {
        ca: ca.map(|_| "ca.crt".into()),
        identity: me.map(|_| ("c.crt".into(), "c.key".into())),
        alpn: vec![b"http/1.1".to_vec()],
        verify,
    };
    let (cert, key) = me.map_or((String::new(), String::new()), |m| (m.cert_pem.clone(), m.key_pem.clone()));
    let ca = ca.map(|c| c.cert_pem.clone()).unwrap_or_default();
    files.build(&contents(&[("ca.crt", &ca), ("c.crt", &cert), ("c.key", &key)])).map(|(c, _)| c)
}

/// One handshake to `name` and one byte each way: the ALPN agreed, or the client's reason.
async fn handshake(
    server: ServerConfig,
    client: ClientConfig,
    name: &str,
) -> Result<Option<Vec<u8>>, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        let mut tls = acceptor.accept(b).await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        tls.write_all(&byte).await?;
        tls.flush().await
    });
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let result = async {
        let mut tls = TlsConnector::from(Arc::new(client)).connect(name, a).await?;
        tls.write_all(b"x").await?;
        tls.flush().await?;
        let mut byte = [0u8; 1];
        // TLS 1.3: a server refusing the client's certificate says so on the first read.
        tls.read_exact(&mut byte).await?;
        Ok::<_, io::Error>(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
    }
    .await;
    result.map_err(|e| failure_reason(&e))
}

#[tokio::test]
async fn a_pool_ca_verifies_the_endpoint_and_alpn_is_offered() {
    let ca = Authority::new("ca").unwrap();
    let server = endpoint(&leaf(&ca, "api.internal", false), None);
    let agreed = handshake(server, pool(Some(&ca), None, true).unwrap(), "api.internal").await;
    assert_eq!(agreed, Ok(Some(b"http/1.1".to_vec())));
}

#[tokio::test]
async fn an_unknown_ca_and_a_wrong_name_are_refused_with_their_reason() {
    let (ca, other) = (Authority::new("ca").unwrap(), Authority::new("other").unwrap());
    let server = || endpoint(&leaf(&ca, "api.internal", false), None);

    let err = handshake(server(), pool(Some(&other), None, true).unwrap(), "api.internal").await.unwrap_err();
    assert_eq!(err, "certificate issued by an unknown CA");

    let err = handshake(server(), pool(Some(&ca), None, true).unwrap(), "db.internal").await.unwrap_err();
    assert!(err.starts_with("certificate not valid for name \"db.internal\""), "{err}");
}

#[tokio::test]
async fn without_verification_any_certificate_and_name_pass() {
    let stranger = Authority::new("stranger").unwrap();
    let server = endpoint(&leaf(&stranger, "somewhere.else", false), None);
    assert!(handshake(server, pool(None, None, false).unwrap(), "api.internal").await.is_ok());
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_endpoint_that_requires_one() {
    let ca = Authority::new("ca").unwrap();
    let server = || endpoint(&leaf(&ca, "api.internal", false), Some(&ca));
    let me = leaf(&ca, "proxy", true);
    assert!(handshake(server(), pool(Some(&ca), Some(&me), true).unwrap(), "api.internal").await.is_ok());

    let err = handshake(server(), pool(Some(&ca), None, true).unwrap(), "api.internal").await.unwrap_err();
    assert!(err.starts_with("the endpoint refused the handshake"), "{err}");
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused_naming_both_files() {
    let ca = Authority::new("ca").unwrap();
    let (me, other) = (leaf(&ca, "proxy", true), leaf(&ca, "other", true));
    let mixed = Issued { key_pem: other.key_pem, ..me };
    let err = pool(Some(&ca), Some(&mixed), true).unwrap_err();
    assert_eq!(err, TlsError::KeyMismatch { cert: "c.crt".into(), key: "c.key".into() });
}

#[test]
fn the_files_watched_are_the_ones_named() {
    let files = UpstreamFiles {
        ca: None,
        identity: Some(("/c.crt".into(), "/c.key".into())),
        alpn: Vec::new(),
        verify: true,
    };
    assert_eq!(files.paths(), vec![PathBuf::from("/c.crt"), PathBuf::from("/c.key")]);
    assert_eq!(files.cert_file(), Some(PathBuf::from("/c.crt")));
}
