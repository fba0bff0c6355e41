//! `--policies`: sluice-proxy's plain route against a route with a JWT check and header
//! transforms on both directions, to show what route policies cost per request. Every request
//! carries the same token, as a client reusing its token does: after the first, each check is a
//! hit in the route's cache of verified tokens (a new token costs a signature check, tens of µs:
//! criterion's `jwt/verify_*`).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;

use super::{Comparison, Entry, PLAIN, Pins, Start, Target};
use crate::bench::configs::sluice_conf_with;
use crate::bench::processes::{Procs, spawn_sluice};
use crate::bench::report::{Results, Section, instances_memory, versus};
use crate::bench::side_by_side;
use crate::root;

pub(super) const ENTRY: Entry = Entry {
    flag: Some("policies"),
    help: "Run sluice-proxy twice instead of nginx and HAProxy: a plain route, and a route with a JWT \
           check and request and response header transforms. Results go to the \"policies\" section",
    run: |args| side_by_side(Policies, args),
};

const SLUICE_POLICIES: u16 = 18014;
const SLUICE_POLICIES_ADMIN: u16 = 18914;

const PLAIN_ROUTE: Target = PLAIN.named("sluice, plain route");
const POLICIES: Target = Target::sluice(
    "sluice, JWT + header transforms",
    SLUICE_POLICIES,
    SLUICE_POLICIES_ADMIN,
    "sluice-policies.yaml",
    || policies_conf(SLUICE_POLICIES),
);

/// A fixed Ed25519 key's JWKS and a token it signed (`sub: user-42`, expiring in 2100), made
/// with `openssl genpkey -algorithm ed25519` and `openssl pkeyutl -sign -rawin`. A benchmark's
/// key, not a secret: it signs nothing else.
const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"bench","x":"BEm4MZRUwP3L_J5WbVKMlqg9k4OkeX5NN8iohXxgYWc"}]}"#;
const AUTHORIZATION: &str = "Authorization: Bearer eyJhbGciOiJFZERTQSIsImtpZCI6ImJlbmNoIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lkcC5iZW5jaCIsImF1ZCI6ImJlbmNoIiwic3ViIjoidXNlci00MiIsImV4cCI6NDEwMjQ0NDgwMH0.re1l7j7P5o8sWNUVBCg1F1l0nZKZcijnKPoJ1XEDp67wpMrHKenIrFgCQpFTvpuH3bDxCRiCV33M_XY-43PBAQ";

struct Policies;

/// Where the JWKS file is written.
fn jwks_path() -> PathBuf {
    root().join("target/bench/policies/jwks.json")
}

/// The plain config with the policies on its route.
fn policies_conf(port: u16) -> String {
    let route = format!(
        "    jwt:\n      jwks_file: '{}'\n      issuer: https://idp.bench\n      audiences: [bench]\n      \
         claims_to_headers: [{{claim: sub, header: X-User}}]\n      strip_token: true\n    \
         request_headers:\n      remove: [X-Debug]\n      set: [{{name: X-Client, value: '%client_ip%'}}, \
         {{name: X-Route, value: '%route%'}}]\n      add: [{{name: X-Via, value: sluice}}]\n    \
         response_headers:\n      remove: [Server]\n      set: [{{name: X-Request-Id-Echo, value: '%request_id%'}}]\n",
        jwks_path().display()
    );
    sluice_conf_with(port, "", "", &route)
}

impl Comparison for Policies {
    fn section(&self) -> Section {
        Section {
            begin: "<!-- bench-policies:begin -->",
            end: "<!-- bench-policies:end -->",
            heading: Some("Cost of route policies (JWT, header transforms)"),
        }
    }

    fn tools(&self) -> &'static [&'static str] {
        &["nginx", "wrk"]
    }

    fn targets(&self) -> &'static [Target] {
        &[PLAIN_ROUTE, POLICIES]
    }

    /// Pinned (SPEC §5): the difference is a few µs of CPU per request, which the shared-core
    /// method's noise hides.
    fn pinned(&self) -> Option<Pins> {
        Some(Pins { load: 0, proxy: 1 })
    }

    fn headers(&self) -> &'static [&'static str] {
        &[AUTHORIZATION]
    }

    fn prepare(&mut self) -> anyhow::Result<()> {
        let path = jwks_path();
        std::fs::create_dir_all(path.parent().context("jwks dir")?)?;
        std::fs::write(&path, JWKS).with_context(|| format!("writing {}", path.display()))
    }

    fn start(&mut self, procs: &mut Procs, with: &Start<'_>) -> anyhow::Result<Vec<u32>> {
        let plain = spawn_sluice(procs, "sluice plain route", with.sluice_bin, PLAIN_ROUTE, with.workers)?;
        let policies = spawn_sluice(procs, "sluice policies", with.sluice_bin, POLICIES, with.workers)?;
        Ok(vec![plain, policies])
    }

    fn machine(&self, _: usize) -> String {
        "pinned: wrk (one thread) and the upstream (nginx, one worker) on CPU 0, the sluice-proxy instance \
         under test alone on CPU 1 with one worker thread (both instances run throughout, only one gets \
         traffic at a time)"
            .to_owned()
    }

    fn versus(&self, out: &mut String, r: &Results, si: usize) {
        let _ = writeln!(out);
        versus(out, "policies / plain", r.runs_of(si, POLICIES), r.runs_of(si, PLAIN_ROUTE));
    }

    fn notes(&self, out: &mut String, r: &Results) {
        let _ = writeln!(
            out,
            "Both instances get the same requests, each with the same `Authorization: Bearer` token (an \
             Ed25519 JWT): the plain route passes it on, the policies route verifies it (a cache hit after the \
             first request), sends its `sub` as `X-User`, strips the token, and changes four request and two \
             response fields, two of them with per-request variables."
        );
        instances_memory(out, r);
        let _ = writeln!(
            out,
            "\nThe policies instance's route:\n\n```yaml\n{}```",
            policies_conf(SLUICE_POLICIES)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::compare::ports;
    use crate::bench::processes::{SLUICE, SLUICE_ADMIN, UPSTREAM};

    #[test]
    fn the_policies_config_parses_with_its_policies() {
        use sluice_bundle::{Format, parse};
        let c = parse(policies_conf(SLUICE_POLICIES).as_bytes(), Format::Yaml).unwrap();
        let route = &c.routes[0];
        assert!(route.jwt.is_some() && route.request_headers.is_some() && route.response_headers.is_some());
        assert_eq!(
            ports(&Policies),
            [UPSTREAM, SLUICE, SLUICE_POLICIES, SLUICE_ADMIN, SLUICE_POLICIES_ADMIN]
        );
    }
}
