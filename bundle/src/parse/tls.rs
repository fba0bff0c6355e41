//! Decoding of the TLS settings: a listener's certificates and client authentication, a route's
//! client-certificate rule, a pool's upstream TLS. Files are named, never read: only the data
//! plane that uses them can see them.

use serde_json::Value;

use super::{check_host_match, check_regex, one_of};
use crate::decode::{Decode, Decoder, Fields};
use crate::tls::*;

// === ListenerTls ===

impl Decode for ListenerTls {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["certificates", "client_auth", "alpn"], d)?;
        let certificates = match f.raw("certificates") {
            None => {
                d.error(
                    &f.path("certificates"),
                    "missing required field: TLS needs at least one certificate",
                );
                Vec::new()
            }
            Some(Value::Array(a)) if a.is_empty() => {
                d.error(&f.path("certificates"), "TLS needs at least one certificate");
                Vec::new()
            }
            Some(_) => f.list::<ServerCertificate>("certificates", d),
        };
        let defaults: Vec<usize> = certificates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.default == Some(true)))
            .map(|(i, _)| i)
            .collect();
        if let [first, second, ..] = defaults[..] {
            d.error(
                &format!("{}[{second}].default", f.path("certificates")),
                format!("certificates[{first}] is already the default; only one certificate can be"),
            );
        }
        // The same name on two certificates would make the choice depend on their order.
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (i, c) in certificates.iter().enumerate() {
            let Some(c) = c else { continue };
            for (k, name) in c.server_names.iter().enumerate() {
                let lower = name.to_ascii_lowercase();
                match seen.iter().find(|(n, _)| *n == lower) {
                    Some((_, j)) if *j != i => d.error(
                        &format!("{}[{i}].server_names[{k}]", f.path("certificates")),
                        format!("{name:?} is already served by certificates[{j}]"),
                    ),
                    Some(_) => d.error(
                        &format!("{}[{i}].server_names[{k}]", f.path("certificates")),
                        format!("{name:?} is listed twice"),
                    ),
                    None => seen.push((lower, i)),
                }
            }
        }
        let client_auth = f.opt::<ClientAuth>("client_auth", d);
        let alpn = alpn(&f, d);
        Some(ListenerTls {
            certificates: certificates.into_iter().collect::<Option<_>>()?,
            client_auth: client_auth.ok()?,
            alpn: alpn.ok()?,
        })
    }
}

impl Decode for ServerCertificate {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f =
            Fields::new(v, path, &["cert_file", "key_file", "server_names", "default", "client_auth"], d)?;
        let cert_file = file(&f, "cert_file", d);
        let key_file = file(&f, "key_file", d);
        let server_names = f.list::<String>("server_names", d);
        for (i, n) in server_names.iter().enumerate() {
            if let Some(Err(e)) = n.as_deref().map(check_server_name) {
                d.error(&format!("{}[{i}]", f.path("server_names")), e);
            }
        }
        let default = f.opt::<bool>("default", d);
        let client_auth = f.opt::<ClientAuth>("client_auth", d);
        Some(ServerCertificate {
            cert_file: cert_file?,
            key_file: key_file?,
            server_names: server_names.into_iter().collect::<Option<_>>()?,
            default: default.ok()?,
            client_auth: client_auth.ok()?,
        })
    }
}

/// An SNI name: a DNS name or `*.` and one; never an IP address (SNI carries none) or a port.
fn check_server_name(n: &str) -> Result<(), String> {
    if n.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{n:?}: SNI carries DNS names only; a client connecting by address sends none, so it gets the default certificate"
        ));
    }
    check_host_match(n)
}

impl Decode for ClientAuth {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["ca_file", "mode", "crl_file"], d)?;
        let ca_file = file(&f, "ca_file", d);
        let mode = f.opt::<ClientAuthMode>("mode", d);
        let crl_file = opt_file(&f, "crl_file", d);
        Some(ClientAuth { ca_file: ca_file?, mode: mode.ok()?, crl_file: crl_file.ok()? })
    }
}

impl Decode for ClientAuthMode {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        one_of(v, path, d, &[Self::Required, Self::Optional], |m| match m {
            Self::Required => "required",
            Self::Optional => "optional",
        })
    }
}

impl Decode for Alpn {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        one_of(v, path, d, &Self::ALL, Self::as_str)
    }
}

/// An ALPN list: at least one protocol, each once.
fn alpn(f: &Fields<'_>, d: &mut Decoder) -> Result<Option<Vec<Alpn>>, ()> {
    if f.raw("alpn").is_none() {
        return Ok(None);
    }
    let list = f.list::<Alpn>("alpn", d);
    let list: Vec<Alpn> = list.into_iter().collect::<Option<_>>().ok_or(())?;
    if list.is_empty() {
        d.error(&f.path("alpn"), "offer at least one protocol, or leave alpn out for the default");
        return Err(());
    }
    if let Some(i) = (1..list.len()).find(|&i| list[..i].contains(&list[i])) {
        d.error(&format!("{}[{i}]", f.path("alpn")), format!("{} is listed twice", list[i].as_str()));
        return Err(());
    }
    Ok(Some(list))
}

// === ClientCertificateRule ===

impl Decode for ClientCertificateRule {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["subject", "san"], d)?;
        let subject = f.opt::<StringMatch>("subject", d);
        let san = f.list::<StringMatch>("san", d);
        Some(ClientCertificateRule { subject: subject.ok()?, san: san.into_iter().collect::<Option<_>>()? })
    }
}

impl Decode for StringMatch {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        const KINDS: [&str; 4] = ["exact", "prefix", "suffix", "regex"];
        let f = Fields::new(v, path, &KINDS, d)?;
        let given: Vec<&str> = KINDS.into_iter().filter(|k| f.raw(k).is_some()).collect();
        match given.len() {
            0 => {
                d.error(path, "needs one of exact, prefix, suffix, regex");
                return None;
            }
            1 => {}
            _ => {
                d.error(path, format!("{} are exclusive; use one", given.join(" and ")));
                return None;
            }
        }
        let get = |k: &str, d: &mut Decoder| f.opt::<String>(k, d);
        let (exact, prefix, suffix, regex) =
            (get("exact", d), get("prefix", d), get("suffix", d), get("regex", d));
        if let Ok(Some(r)) = &regex {
            check_regex(r, &f.path("regex"), d)?;
        }
        Some(StringMatch {
            exact: exact.ok()?,
            prefix: prefix.ok()?,
            suffix: suffix.ok()?,
            regex: regex.ok()?,
        })
    }
}

// === UpstreamTls ===

impl Decode for UpstreamTls {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &["sni", "ca_file", "cert_file", "key_file", "alpn", "insecure_skip_verify"],
            d,
        )?;
        let sni = f.opt::<String>("sni", d).and_then(|s| match s {
            Some(s) if s.parse::<std::net::IpAddr>().is_ok() || !super::is_dns_name(&s) => {
                d.error(&f.path("sni"), format!("{s:?} is not a DNS name; SNI carries DNS names only"));
                Err(())
            }
            s => Ok(s),
        });
        let ca_file = opt_file(&f, "ca_file", d);
        let cert_file = opt_file(&f, "cert_file", d);
        let key_file = opt_file(&f, "key_file", d);
        match (&cert_file, &key_file) {
            (Ok(Some(_)), Ok(None)) => d.error(&f.path("key_file"), "cert_file needs its key_file"),
            (Ok(None), Ok(Some(_))) => d.error(&f.path("cert_file"), "key_file needs its cert_file"),
            _ => {}
        }
        let alpn = alpn(&f, d);
        let skip = f.opt::<bool>("insecure_skip_verify", d);
        if let (Ok(Some(true)), Ok(Some(_))) = (&skip, &ca_file) {
            d.error(
                &f.path("ca_file"),
                "insecure_skip_verify turns verification off, so ca_file would be unused",
            );
        }
        Some(UpstreamTls {
            sni: sni.ok()?,
            ca_file: ca_file.ok()?,
            cert_file: cert_file.ok()?,
            key_file: key_file.ok()?,
            alpn: alpn.ok()?,
            insecure_skip_verify: skip.ok()?,
        })
    }
}

// === files ===

/// A required file path on the node.
fn file(f: &Fields<'_>, key: &str, d: &mut Decoder) -> Option<String> {
    let p = f.req::<String>(key, d)?;
    check_file(&p).map_err(|e| d.error(&f.path(key), e)).ok()?;
    Some(p)
}

pub(super) fn opt_file(f: &Fields<'_>, key: &str, d: &mut Decoder) -> Result<Option<String>, ()> {
    match f.opt::<String>(key, d)? {
        Some(p) => check_file(&p).map(|()| Some(p)).map_err(|e| d.error(&f.path(key), e)),
        None => Ok(None),
    }
}

/// An absolute path. PEM text in its place is refused: bundles are signed, not encrypted, and
/// travel to every data plane and into the database.
fn check_file(p: &str) -> Result<(), String> {
    if p.contains("-----BEGIN") {
        return Err("this is PEM text, not a path: bundles are signed but not encrypted, so they name files on the node and never carry certificates or keys".into());
    }
    if !p.starts_with('/') {
        return Err(format!("{p:?} must be an absolute path on the node"));
    }
    if p.contains('\0') || p.len() > 4096 {
        return Err("not a usable file path".into());
    }
    Ok(())
}
