use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

use super::*;
use crate::pki::{Authority, Issued, Leaf};
use crate::{ClientAuth, ClientFiles, client_config};

fn contents(files: &[(&str, &str)]) -> Contents {
    Contents::from_memory(files.iter().map(|(p, t)| (PathBuf::from(p), t.as_bytes().to_vec())).collect())
}

fn server_leaf(ca: &Authority, dns: &[&str]) -> Issued {
    ca.issue(&Leaf {
        common_name: dns[0].into(),
        dns: dns.iter().map(|d| (*d).to_owned()).collect(),
        server: true,
        valid_days: 30,
        ..Leaf::default()
    })
    .unwrap()
}

/// An edge config for `leaf`, asking for client certificates from `client_ca` when given.
fn edge(leaf: &Issued, client_ca: Option<&Authority>, auth: ClientAuth) -> EdgeConfig {
    let files = EdgeFiles {
        files: ServerFiles {
            cert: "s.crt".into(),
            key: "s.key".into(),
            client_ca: client_ca.map(|_| "ca.crt".into()),
            crl: None,
            client_auth: auth,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        },
        resumption: Resumption::new().unwrap(),
    };
    let ca = client_ca.map_or(String::new(), |c| c.cert_pem.clone());
    files.build(&contents(&[("s.crt", &leaf.cert_pem), ("s.key", &leaf.key_pem), ("ca.crt", &ca)])).unwrap().0
}

fn client(trusted: &Authority, me: Option<&Issued>, alpn: &[&[u8]]) -> ClientConfig {
    let files = ClientFiles {
        ca: "ca.crt".into(),
        identity: me.map(|_| ("c.crt".into(), "c.key".into())),
        alpn: alpn.iter().map(|a| a.to_vec()).collect(),
    };
    let (cert, key) = me.map_or((String::new(), String::new()), |m| (m.cert_pem.clone(), m.key_pem.clone()));
    client_config(&files, &contents(&[("ca.crt", &trusted.cert_pem), ("c.crt", &cert), ("c.key", &key)]))
        .unwrap()
        .0
}

/// Connects `client` (naming `sni`) to a server choosing among `configs` by name; what the
/// server saw: the index it chose and what was negotiated, or why it failed.
async fn serve(
    configs: Vec<(&'static str, Arc<ServerConfig>)>,
    client: ClientConfig,
    sni: &str,
) -> Result<(usize, Negotiated), Failure> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let (stream, chosen) = accept(b, Duration::from_secs(5), |name| {
            let i = name.and_then(|n| configs.iter().position(|(p, _)| name_matches(p, n))).unwrap_or(0);
            (configs[i].1.clone(), i)
        })
        .await?;
        Ok((chosen, negotiated(&stream)))
    });
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let client = async {
        let mut tls = TlsConnector::from(Arc::new(client)).connect(name, a).await?;
        tls.write_all(b"x").await?;
        Ok::<_, io::Error>(tls)
    }
    .await;
    let seen = server.await.unwrap();
    drop(client);
    seen
}

#[test]
fn names_match_exactly_or_by_one_wildcard_label() {
    assert!(name_matches("api.example.com", "api.example.com"));
    assert!(name_matches("API.example.com", "api.example.com"));
    assert!(name_matches("*.example.com", "api.example.com"));
    assert!(!name_matches("*.example.com", "example.com"));
    assert!(!name_matches("*.example.com", "a.b.example.com"));
    assert!(!name_matches("*.example.com", ".example.com"));
    assert!(!name_matches("api.example.com", "api.example.com.evil"));
}

#[tokio::test]
async fn sni_chooses_the_config_and_the_handshake_reports_what_it_agreed() {
    let ca = Authority::new("edge ca").unwrap();
    let a = edge(&server_leaf(&ca, &["a.example.com"]), None, ClientAuth::Off);
    let b = edge(&server_leaf(&ca, &["b.example.com"]), None, ClientAuth::Off);
    assert_eq!(a.cert.dns, ["a.example.com"]);
    let configs = vec![("a.example.com", a.config.clone()), ("*.example.com", b.config.clone())];

    let (chosen, n) = serve(configs.clone(), client(&ca, None, &[b"h2"]), "b.example.com").await.unwrap();
    assert_eq!(chosen, 1);
    assert_eq!(n.sni.as_deref(), Some("b.example.com"));
    assert!(n.h2);
    assert_eq!(n.version, "TLSv1.3");
    assert!(n.peer.is_none());

    let (chosen, n) = serve(configs, client(&ca, None, &[b"http/1.1"]), "a.example.com").await.unwrap();
    assert_eq!(chosen, 0);
    assert!(!n.h2);
}

#[tokio::test]
async fn a_verified_client_certificate_is_reported_and_others_are_refused_by_reason() {
    let ca = Authority::new("edge ca").unwrap();
    let clients = Authority::new("client ca").unwrap();
    let other = Authority::new("another ca").unwrap();
    let leaf = server_leaf(&ca, &["a.example.com"]);
    let required = edge(&leaf, Some(&clients), ClientAuth::Required).config;
    let me = clients
        .issue(&Leaf {
            common_name: "ops, admin".into(),
            uris: vec!["spiffe://example.org/ops".into()],
            dns: vec!["ops.example.com".into()],
            client: true,
            valid_days: 1,
            ..Leaf::default()
        })
        .unwrap();

    let (_, n) =
        serve(vec![("a.example.com", required.clone())], client(&ca, Some(&me), &[]), "a.example.com")
            .await
            .unwrap();
    let peer = n.peer.expect("verified client certificate");
    assert_eq!(peer.info.subject, "CN=ops\\, admin");
    assert_eq!(peer.info.sans().collect::<Vec<_>>(), ["ops.example.com", "spiffe://example.org/ops"]);
    assert_eq!(peer.sha256.len(), 64);

    let missing =
        serve(vec![("a.example.com", required.clone())], client(&ca, None, &[]), "a.example.com").await;
    assert_eq!(missing.unwrap_err(), Failure::ClientCertificateMissing);
    let stranger =
        other.issue(&Leaf { common_name: "x".into(), client: true, valid_days: 1, ..Leaf::default() });
    let foreign =
        serve(vec![("a.example.com", required)], client(&ca, Some(&stranger.unwrap()), &[]), "a.example.com")
            .await;
    assert_eq!(foreign.unwrap_err(), Failure::ClientCertificateInvalid);
}

#[tokio::test]
async fn plaintext_silence_and_garbage_fail_with_their_reasons() {
    let ca = Authority::new("edge ca").unwrap();
    let config = edge(&server_leaf(&ca, &["a.example.com"]), None, ClientAuth::Off).config;
    let attempt = |bytes: &'static [u8], close: bool| {
        let config = config.clone();
        async move {
            let (mut a, b) = tokio::io::duplex(4096);
            let server = tokio::spawn(accept(b, Duration::from_millis(300), move |_| (config, ())));
            a.write_all(bytes).await.unwrap();
            if close {
                a.shutdown().await.unwrap();
            }
            let result = server.await.unwrap().map(|_| ());
            drop(a);
            result.unwrap_err()
        }
    };
    assert_eq!(attempt(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false).await, Failure::NotTls);
    assert_eq!(attempt(b"", false).await, Failure::Timeout);
    // A handshake record that ends half-way through its ClientHello.
    assert_eq!(attempt(b"\x16\x03\x01\x00\x80\x01\x00\x00\x7c\x03\x03", true).await, Failure::Closed);
    // A complete record whose ClientHello claims more bytes than it has.
    assert_eq!(attempt(b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03", false).await, Failure::Malformed);
}
