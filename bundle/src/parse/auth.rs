//! Decoding of route authentication (`jwt`). Files are named, never read; URLs are checked for
//! shape, never fetched: only the data plane that uses them can.

use std::collections::HashSet;

use serde_json::Value;

use super::tls::opt_file;
use super::{check_cookie_name, check_field_name, check_header_name, one_of, positive};
use crate::Duration;
use crate::auth::*;
use crate::decode::{Decode, Decoder, Fields};
use crate::resilience::ByteSize;

/// The shortest `jwks_refresh`: an identity provider is not to be polled harder than this.
const MIN_JWKS_REFRESH: Duration = Duration::from_secs(10);

impl Decode for Jwt {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &[
                "jwks_file",
                "jwks_url",
                "jwks_refresh",
                "jwks_ca_file",
                "issuer",
                "audiences",
                "leeway",
                "from",
                "claims_to_headers",
                "strip_token",
            ],
            d,
        )?;
        let before = d.error_count();
        match (f.raw("jwks_file").is_some(), f.raw("jwks_url").is_some()) {
            (false, false) => d.error(&f.path("jwks_file"), "missing required field (or jwks_url)"),
            (true, true) => d.error(path, "jwks_file and jwks_url are exclusive; use one"),
            _ => {}
        }
        let jwks_file = opt_file(&f, "jwks_file", d);
        let jwks_url = f.opt::<String>("jwks_url", d);
        let https = match &jwks_url {
            Ok(Some(u)) => match check_url(u) {
                Ok(https) => https,
                Err(e) => {
                    d.error(&f.path("jwks_url"), e);
                    false
                }
            },
            _ => false,
        };
        let jwks_refresh = positive(&f, "jwks_refresh", d);
        if let Ok(Some(r)) = &jwks_refresh
            && *r < MIN_JWKS_REFRESH
        {
            d.error(
                &f.path("jwks_refresh"),
                format!("{r} is shorter than the shortest refresh, {MIN_JWKS_REFRESH}"),
            );
        }
        let jwks_ca_file = opt_file(&f, "jwks_ca_file", d);
        let only_url = [("jwks_refresh", "jwks_url"), ("jwks_ca_file", "an https jwks_url")];
        for (key, needs) in only_url {
            let applies = if key == "jwks_ca_file" { https } else { matches!(jwks_url, Ok(Some(_))) };
            if f.raw(key).is_some() && !applies {
                d.error(&f.path(key), format!("only applies with {needs}"));
            }
        }
        let issuer = f.opt::<String>("issuer", d);
        if let Ok(Some(i)) = &issuer
            && i.is_empty()
        {
            d.error(&f.path("issuer"), "must not be empty (leave it out for any issuer)");
        }
        let audiences = f.list::<String>("audiences", d);
        for (i, a) in audiences.iter().enumerate() {
            if a.as_deref().is_some_and(str::is_empty) {
                d.error(&format!("{}[{i}]", f.path("audiences")), "must not be empty");
            }
        }
        let leeway = f.opt::<Duration>("leeway", d);
        if let Ok(Some(l)) = &leeway
            && *l > Duration::from_secs(3600)
        {
            d.error(&f.path("leeway"), format!("{l} is more than the largest leeway, 1h"));
        }
        let from = f.opt::<TokenSource>("from", d);
        let claims = claims(&f, d);
        let strip_token = f.opt::<bool>("strip_token", d);
        if d.error_count() > before {
            return None;
        }
        Some(Jwt {
            jwks_file: jwks_file.ok()?,
            jwks_url: jwks_url.ok()?,
            jwks_refresh: jwks_refresh.ok()?,
            jwks_ca_file: jwks_ca_file.ok()?,
            issuer: issuer.ok()?,
            audiences: audiences.into_iter().collect::<Option<_>>()?,
            leeway: leeway.ok()?,
            from: from.ok()?,
            claims_to_headers: claims?,
            strip_token: strip_token.ok()?,
        })
    }
}

/// `claims_to_headers`: each header name once, and one the proxy lets a config write.
fn claims(f: &Fields<'_>, d: &mut Decoder) -> Option<Vec<ClaimHeader>> {
    let list = f.list::<ClaimHeader>("claims_to_headers", d);
    let mut seen = HashSet::new();
    for (i, c) in list.iter().enumerate() {
        let Some(c) = c else { continue };
        let at = format!("{}[{i}].header", f.path("claims_to_headers"));
        if !seen.insert(c.header.to_ascii_lowercase()) {
            d.error(&at, format!("{} is already set from another claim", c.header));
        }
    }
    list.into_iter().collect()
}

impl Decode for ClaimHeader {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["claim", "header"], d)?;
        let claim = f.req::<String>("claim", d);
        let header = f.req::<String>("header", d);
        if let Some(c) = &claim
            && (c.is_empty() || c.split('.').any(str::is_empty))
        {
            d.error(&f.path("claim"), format!("{c:?}: a claim name, or names joined by '.'"));
        }
        if let Some(h) = &header {
            check_field_name(h, &f.path("header"), d);
        }
        Some(ClaimHeader { claim: claim?, header: header? })
    }
}

impl Decode for TokenSource {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["header", "cookie"], d)?;
        match (f.raw("header").is_some(), f.raw("cookie").is_some()) {
            (false, false) => d.error(path, "needs one of header, cookie"),
            (true, true) => d.error(path, "header and cookie are exclusive; use one"),
            _ => {}
        }
        let header = f.opt::<String>("header", d);
        let cookie = f.opt::<String>("cookie", d);
        if let Ok(Some(h)) = &header {
            check_header_name(h, &f.path("header"), d);
        }
        if let Ok(Some(c)) = &cookie {
            check_cookie_name(c, &f.path("cookie"), d);
        }
        Some(TokenSource { header: header.ok()?, cookie: cookie.ok()? })
    }
}

/// An `http://` or `https://` URL with a host and no credentials (a bundle travels to every data
/// plane and into the database). True for `https`.
fn check_url(u: &str) -> Result<bool, String> {
    let (https, rest) = if let Some(r) = u.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = u.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{u:?} must start with https:// or http://"));
    };
    if !u.bytes().all(|b| b.is_ascii_graphic()) || u.contains('#') {
        return Err(format!("{u:?} is not a usable URL (printable ASCII, no fragment)"));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("credentials in a URL would travel in every bundle; serve the JWKS without them".into());
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("{u:?} names no host"));
    }
    Ok(https)
}

impl Decode for ExtAuthz {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["pool", "timeout", "fail_mode", "headers", "max_body"], d)?;
        let pool = f.req::<String>("pool", d);
        let timeout = positive(&f, "timeout", d);
        let fail_mode = f.opt::<FailMode>("fail_mode", d);
        let headers = match f.raw("headers") {
            None => Ok(None),
            Some(_) => {
                let list = f.list::<String>("headers", d);
                for (i, h) in list.iter().enumerate() {
                    if let Some(h) = h {
                        check_header_name(h, &format!("{}[{i}]", f.path("headers")), d);
                    }
                }
                list.into_iter().collect::<Option<Vec<_>>>().map(Some).ok_or(())
            }
        };
        let max_body = f.opt::<ByteSize>("max_body", d);
        Some(ExtAuthz {
            pool: pool?,
            timeout: timeout.ok()?,
            fail_mode: fail_mode.ok()?,
            headers: headers.ok()?,
            max_body: max_body.ok()?,
        })
    }
}

impl Decode for FailMode {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        one_of(v, path, d, &[Self::Open, Self::Closed], |m| match m {
            Self::Open => "open",
            Self::Closed => "closed",
        })
    }
}
