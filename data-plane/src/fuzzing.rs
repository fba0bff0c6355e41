//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz), here so that `cargo test` replays
//! their seed corpora (`fuzz/corpus/<target>/`) without libFuzzer. Each asserts what must hold
//! for every input, beyond not panicking. Not an API: inputs that break an assertion panic.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;
use serde_json::Value;

use bytes::{Bytes, BytesMut};

use crate::body::client::{Piece, Wire};
use crate::listener::strict::{Framing, Reject, judge};
use sluice_compile::diff::{DiffRules, Side};

/// `http1_framing`: the bytes after the first are what a client sends; the first byte picks
/// how they are cut into reads. The framing check's verdict (which head is refused, and why) is
/// the same whether the bytes come at once, one by one, or in pieces; and the inline HTTP/1.1
/// server, cutting the same bytes into heads and bodies as it reads them, refuses the same head
/// for the same reason and finds the same requests and body bytes before it, however the bytes
/// arrive.
pub fn http1_framing(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else { return };
    let whole = first_verdict([stream]);
    let bytes = first_verdict(stream.chunks(1));
    assert_eq!(bytes, whole, "fed byte by byte");
    let pieces_verdict = first_verdict(pieces(stream, seed));
    assert_eq!(pieces_verdict, whole, "fed in pieces (seed {seed})");
    if let Some((_, why)) = whole {
        assert!(!why.message().is_empty());
    }
    // A first head like the HTTP/2 preface is not HTTP/1.1 to the framing check (it stops
    // checking). The listener hands the exact preface to hyper; the HTTP/1.1 server refuses
    // anything else that starts so (with blank lines before it, say).
    let start = stream.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(stream.len());
    if stream[start..].starts_with(b"PRI * HTTP/2.0\r\n") {
        return;
    }
    let served = serve_wire([stream]);
    assert_eq!(served.1, whole, "the server's verdict against the framing check's: {served:?}");
    assert_eq!(serve_wire(stream.chunks(1)), served, "served byte by byte");
    assert_eq!(serve_wire(pieces(stream, seed)), served, "served in pieces (seed {seed})");
}

/// What the HTTP/1.1 server makes of `reads`: each request's head and body bytes (in order, up to
/// a refusal), and the first refused head's index and reason.
type Served = (Vec<(Bytes, Vec<u8>)>, Option<(u64, Reject)>);

fn serve_wire<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> Served {
    let mut wire = Wire::new(BytesMut::new());
    let mut requests: Vec<(Bytes, Vec<u8>)> = Vec::new();
    // Between requests (`true`) or reading a body.
    let mut at_head = true;
    for read in reads {
        wire.push(read);
        loop {
            if at_head {
                let head = match wire.take_head() {
                    Ok(Some(head)) => head,
                    Ok(None) => break,
                    Err(why) => {
                        let index = requests.len() as u64;
                        return (requests, Some((index, why)));
                    }
                };
                let body = match judge(&head) {
                    Ok(body) => body,
                    Err(why) => {
                        let index = requests.len() as u64;
                        return (requests, Some((index, why)));
                    }
                };
                wire.begin(body);
                requests.push((head, Vec::new()));
                at_head = false;
            }
            while let Some(piece) = wire.take_data() {
                if let (Piece::Data(data), Some((_, body))) = (piece, requests.last_mut()) {
                    body.extend_from_slice(&data);
                }
            }
            match wire.body_ended() {
                Some(true) => at_head = true,
                // Where the next head starts is unknown: that head is refused.
                Some(false) => {
                    let index = requests.len() as u64;
                    return (requests, Some((index, Reject::BadChunk)));
                }
                None => break,
            }
        }
    }
    (requests, None)
}

/// `http1_response`: bytes an upstream might answer, read as the inline HTTP/1.1 client reads
/// them (the first byte picks GET or HEAD and how the rest is cut into reads). Whatever the bytes:
/// no panic, and the same verdict (status, body, trailers, reuse, or the error) whether they come
/// at once, one by one, or in pieces.
pub fn http1_response(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else { return };
    let method = if seed & 0x80 == 0 { http::Method::GET } else { http::Method::HEAD };
    let whole = crate::upstream::read_response(&method, [stream]);
    assert_eq!(crate::upstream::read_response(&method, stream.chunks(1)), whole, "fed byte by byte");
    assert_eq!(
        crate::upstream::read_response(&method, pieces(stream, seed)),
        whole,
        "fed in pieces (seed {seed})"
    );
    if let Ok((_, body, _, _)) = &whole {
        assert!(body.len() <= stream.len());
    }
}

/// The first refusal a fresh `Framing` reports over `reads`; none comes after it.
fn first_verdict<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> Option<(u64, Reject)> {
    let mut framing = Framing::default();
    let mut verdict = None;
    for read in reads {
        let v = framing.feed(read);
        match verdict {
            None => verdict = v,
            Some(_) => assert_eq!(v, None, "a verdict after the connection was refused"),
        }
    }
    verdict
}

/// `data` cut into pieces of 1 to 16 bytes, sizes drawn from `seed`.
fn pieces(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x100;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // xorshift: cheap and reproducible
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let (piece, tail) = rest.split_at(((state % 16) as usize + 1).min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// Patterns every `response_diff` case masks with, and checks no summary leaves a match of: an
/// e-mail address and a card number, as the defaults write them. Neither can match the mask
/// `***`, so a match left over is a leak, not one the masking made.
const CHECKED_PATTERNS: [&str; 2] = [r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)+", r"\d(?:[ \-]?\d){12,18}"];

/// `response_diff`: NUL-separated parts, all optional: the primary's body, the candidate's
/// body, the rules (lines `header NAME`, `ignore POINTER`, `mask ENTRY`, `pattern REGEX`,
/// `defaults`), the primary's headers and the candidate's (`name: value` lines).
///
/// - A response differs from itself in nothing, and the diff is symmetric.
/// - Without a body to compare (truncated), only the status and headers can differ.
/// - A summary is at most the length asked for, and leaves no match of a mask pattern in any
///   string or key; nor does `redact`.
pub fn response_diff(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0);
    let mut next = || parts.next().unwrap_or_default();
    let (primary_body, candidate_body, rules_text) = (next(), next(), next());
    let (primary_headers, candidate_headers) = (headers(next()), headers(next()));
    let Some(rules) = cached_rules(rules_text) else { return };

    let side = |headers, body, truncated| Side { status: 200, headers, body, truncated };
    let primary = side(&primary_headers, primary_body, false);
    let candidate = side(&candidate_headers, candidate_body, false);
    assert_eq!(rules.compare(&primary, &primary), Vec::<Box<str>>::new(), "the primary differs from itself");
    assert_eq!(
        rules.compare(&candidate, &candidate),
        Vec::<Box<str>>::new(),
        "the candidate differs from itself"
    );
    let fields = rules.compare(&primary, &candidate);
    assert_eq!(fields, rules.compare(&candidate, &primary), "not symmetric");

    let truncated = side(&primary_headers, primary_body, true);
    for field in rules.compare(&truncated, &candidate) {
        assert!(field.starts_with("header:") || &*field == "status", "{field} differs in a truncated body");
    }

    let checked = checked_patterns();
    for side in [&primary, &candidate, &truncated] {
        for max_len in [0, 1, 2, 3, 4, 16, 256] {
            let summary = rules.summary(side, max_len);
            assert!(summary.len() <= max_len, "a summary of {} bytes for at most {max_len}", summary.len());
        }
        let summary = rules.summary(side, usize::MAX);
        let value: Value =
            serde_json::from_str(&summary).unwrap_or_else(|e| panic!("summary is not JSON: {e}"));
        assert_no_match(checked, &value);
    }
    let redacted = rules.redact(&String::from_utf8_lossy(primary_body));
    assert!(!checked.iter().any(|re| re.is_match(&redacted)), "redact left a match");
}

/// `rules(text)`, kept for the next inputs with the same rules: compiling the patterns costs far
/// more than a diff, and mutations mostly change the bodies.
fn cached_rules(text: &[u8]) -> Option<Arc<DiffRules>> {
    /// Rules text, and the rules it compiles to.
    type Entry = (Vec<u8>, Option<Arc<DiffRules>>);
    static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, rules)) = cache.iter().find(|(t, _)| t == text) {
        return rules.clone();
    }
    let rules = rules(text).map(Arc::new);
    if cache.len() >= 64 {
        cache.remove(0);
    }
    cache.push((text.to_vec(), rules.clone()));
    rules
}

fn checked_patterns() -> &'static [Regex] {
    static CHECKED: OnceLock<Vec<Regex>> = OnceLock::new();
    CHECKED.get_or_init(|| CHECKED_PATTERNS.iter().filter_map(|p| Regex::new(p).ok()).collect())
}

/// The rules a `response_diff` case describes, with `CHECKED_PATTERNS` added; `None` if they do
/// not compile (which must say why).
fn rules(text: &[u8]) -> Option<DiffRules> {
    let (mut headers, mut ignore, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    let mut patterns: Vec<String> = CHECKED_PATTERNS.iter().map(|p| (*p).to_owned()).collect();
    let mut defaults = false;
    for line in String::from_utf8_lossy(text).lines() {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "header" => headers.push(rest.to_owned()),
            "ignore" => ignore.push(rest.to_owned()),
            "mask" => mask.push(rest.to_owned()),
            "pattern" => patterns.push(rest.to_owned()),
            "defaults" => defaults = true,
            _ => {}
        }
    }
    match DiffRules::new(&headers, &ignore, &mask, &patterns, defaults) {
        Ok(rules) => Some(rules),
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason");
            None
        }
    }
}

/// `name: value` lines; lines that are no header are skipped.
fn headers(text: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(name, value);
        }
    }
    map
}

/// Fails if a string or key anywhere in `value` holds a match of one of `patterns`.
fn assert_no_match(patterns: &[Regex], value: &Value) {
    let check = |s: &str| {
        assert!(!patterns.iter().any(|re| re.is_match(s)), "a summary leaves {s:?} unmasked");
    };
    match value {
        Value::String(s) => check(s),
        Value::Array(items) => items.iter().for_each(|v| assert_no_match(patterns, v)),
        Value::Object(map) => {
            for (k, v) in map {
                check(k);
                assert_no_match(patterns, v);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_framing_replays_its_corpus() {
        let seeds = sluice_test_support::corpus::seeds("http1_framing");
        for (path, bytes) in &seeds {
            eprintln!("{}", path.display());
            http1_framing(bytes);
        }
        // Some seeds are served whole and some are refused.
        let refused = seeds.iter().filter(|(_, b)| first_verdict([b.get(1..).unwrap_or_default()]).is_some());
        let refused = refused.count();
        assert!(refused > 0 && refused < seeds.len(), "{refused} of {} refused", seeds.len());
    }

    #[test]
    fn http1_response_replays_its_corpus() {
        let seeds = sluice_test_support::corpus::seeds("http1_response");
        let mut read = 0;
        for (path, bytes) in &seeds {
            eprintln!("{}", path.display());
            http1_response(bytes);
            let method = if bytes[0] & 0x80 == 0 { http::Method::GET } else { http::Method::HEAD };
            read += usize::from(crate::upstream::read_response(&method, [&bytes[1..]]).is_ok());
        }
        // Some seeds are read whole and some are refused.
        assert!(read > 0 && read < seeds.len(), "{read} of {} read", seeds.len());
    }

    #[test]
    fn response_diff_replays_its_corpus() {
        let seeds = sluice_test_support::corpus::seeds("response_diff");
        for (path, bytes) in &seeds {
            eprintln!("{}", path.display());
            response_diff(bytes);
        }
    }

    #[test]
    fn pieces_cover_the_input_in_order() {
        let data: Vec<u8> = (0..100).collect();
        for seed in [0, 1, 77, 255] {
            assert_eq!(pieces(&data, seed).concat(), data);
        }
    }
}
