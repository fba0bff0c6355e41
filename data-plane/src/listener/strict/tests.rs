use proptest::prelude::*;

use super::*;

fn verdict(wire: &[u8]) -> Option<(u64, Reject)> {
    Framing::default().feed(wire)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

/// Trailer sections are held to the rules of a head: a lenient parser that ends a line (or the
/// section) at a bare LF would see a different message boundary than ours.
#[test]
fn trailer_sections_follow_the_rules_of_a_head() {
    let post = |trailers: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n{trailers}\r\n"
        )
    };
    for good in ["", "X-Sum: 1\r\n", "X-A: 1\r\nX-B: two words\r\n"] {
        let wire = format!("{}{}", post(good), String::from_utf8_lossy(GET));
        assert_eq!(verdict(wire.as_bytes()), None, "{good:?}");
    }
    for bad in
        ["X: a\nGET /evil HTTP/1.1\r\n", "X: a\r\n folded\r\n", "X: \0\r\n", "no colon\r\n", "X : a\r\n"]
    {
        let wire = format!("{}{}", post(bad), String::from_utf8_lossy(GET));
        assert_eq!(verdict(wire.as_bytes()), Some((1, Reject::BadChunk)), "{bad:?}");
    }
    let huge = format!("X: {}\r\n", "a".repeat(MAX_TRAILERS));
    assert_eq!(verdict(post(&huge).as_bytes()), Some((1, Reject::BadChunk)));
}

#[test]
fn plain_and_pipelined_requests_pass() {
    assert_eq!(verdict(GET), None);
    let mut f = Framing::default();
    assert_eq!(f.feed(&[GET, GET, GET].concat()), None);
    assert_eq!(f.heads, 3);
}

#[test]
fn bodies_are_skipped_by_their_framing() {
    // The bodies contain text that would look like a smuggled head if read as one.
    let sneaky = b"GET /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cl = [b"POST / HTTP/1.1\r\nContent-Length: 64\r\n\r\n".as_slice(), &sneaky[..64], GET].concat();
    let mut f = Framing::default();
    assert_eq!(f.feed(&cl), None);
    assert_eq!(f.heads, 2);

    let chunked = [
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".as_slice(),
        b"40;ext=\"a\"\r\n",
        &sneaky[..64],
        b"\r\n0\r\nX-Trailer: t\r\n\r\n",
        GET,
    ]
    .concat();
    let mut f = Framing::default();
    assert_eq!(f.feed(&chunked), None);
    assert_eq!(f.heads, 2);
}

#[test]
fn smuggling_shapes_are_refused() {
    let cases: [(&[u8], Reject); 8] = [
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            Reject::ContentLengthAndTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            Reject::ContentLengthAndTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            Reject::ConflictingContentLength,
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: 4, 5\r\n\r\n", Reject::ConflictingContentLength),
        (b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n", Reject::InvalidContentLength),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Reject::ChunkedNotLast),
        (b"GET / HTTP/1.1\nHost: a\n\n", Reject::BareLf),
        (b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", Reject::ObsFold),
    ];
    for (wire, why) in cases {
        assert_eq!(verdict(wire), Some((0, why)), "{}", String::from_utf8_lossy(wire));
    }
    assert_eq!(
        verdict(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Some((0, Reject::UnsupportedTransferEncoding))
    );
    assert_eq!(verdict(b"GARBAGE\r\n\r\n"), Some((0, Reject::Malformed)));
}

#[test]
fn chunked_applied_twice_or_not_last_is_refused() {
    let cases: [(&[u8], Reject); 10] = [
        (b"Transfer-Encoding: chunked, chunked\r\n", Reject::ChunkedTwice),
        (b"Transfer-Encoding: chunked,chunked\r\n", Reject::ChunkedTwice),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", Reject::ChunkedTwice),
        (b"Transfer-Encoding: CHUNKED\r\nX-A: 1\r\ntransfer-encoding: Chunked\r\n", Reject::ChunkedTwice),
        (b"Transfer-Encoding: gzip, chunked\r\nTransfer-Encoding: gzip, chunked\r\n", Reject::ChunkedTwice),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", Reject::ChunkedNotLast),
        (b"Transfer-Encoding: chunked, identity\r\n", Reject::ChunkedNotLast),
        (b"Transfer-Encoding: chunked,\r\n", Reject::EmptyTransferCoding),
        (b"Transfer-Encoding: , chunked\r\n", Reject::EmptyTransferCoding),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: \r\n", Reject::EmptyTransferCoding),
    ];
    for (fields, why) in cases {
        let wire = [b"POST / HTTP/1.1\r\nHost: a\r\n".as_slice(), fields, b"\r\n0\r\n\r\n"].concat();
        assert_eq!(verdict(&wire), Some((0, why)), "{}", String::from_utf8_lossy(fields));
    }
    // One `chunked`, last, possibly after other codings on earlier lines, is still fine.
    for fields in [
        &b"Transfer-Encoding: chunked\r\n"[..],
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip ,\tdeflate , chunked\r\n",
    ] {
        let wire = [b"POST / HTTP/1.1\r\nHost: a\r\n".as_slice(), fields, b"\r\n0\r\n\r\n", GET].concat();
        let mut f = Framing::default();
        assert_eq!(f.feed(&wire), None, "{}", String::from_utf8_lossy(fields));
        assert_eq!(f.heads, 2, "the chunked body ended where it should");
    }
}

#[test]
fn equal_repeated_lengths_are_fine() {
    assert_eq!(verdict(b"POST / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"), None);
    assert_eq!(verdict(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nok"), None);
}

#[test]
fn the_refused_index_is_the_offending_request() {
    let wire =
        [GET, GET, b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"].concat();
    assert_eq!(verdict(&wire), Some((2, Reject::ContentLengthAndTransferEncoding)));

    let state = StrictState::default();
    state.refuse(2, Reject::ContentLengthAndTransferEncoding);
    assert_eq!(state.admit(), Ok(()));
    assert_eq!(state.admit(), Ok(()));
    assert_eq!(state.admit(), Err(Reject::ContentLengthAndTransferEncoding));
    assert_eq!(state.admit(), Err(Reject::ContentLengthAndTransferEncoding), "and every later one");
}

#[test]
fn a_refusal_the_proxy_never_asked_about_is_unanswered() {
    let state = StrictState::default();
    assert_eq!(state.unanswered(), None);
    state.refuse(1, Reject::ChunkedNotLast);
    assert_eq!(state.admit(), Ok(()));
    assert_eq!(state.unanswered(), Some(Reject::ChunkedNotLast), "hyper refused the head on its own");
    assert_eq!(state.admit(), Err(Reject::ChunkedNotLast));
    assert_eq!(state.unanswered(), None, "the proxy answered it");
}

#[test]
fn a_broken_chunked_body_taints_the_next_request() {
    let wire = [b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(), b"zz\r\n"].concat();
    assert_eq!(verdict(&wire), Some((1, Reject::BadChunk)));
    let wire = [b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(), b"2\r\nabXX"].concat();
    assert_eq!(verdict(&wire), Some((1, Reject::BadChunk)));
}

#[test]
fn http2_prior_knowledge_is_left_alone() {
    let mut f = Framing::default();
    assert_eq!(f.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00"), None);
    assert_eq!(f.state, State::Passthrough);
    assert_eq!(f.feed(b"\nanything\n\n"), None);
}

#[test]
fn oversized_heads_are_refused() {
    let mut f = Framing::default();
    let mut wire = b"GET / HTTP/1.1\r\n".to_vec();
    while wire.len() <= MAX_HEAD {
        wire.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    assert_eq!(f.feed(&wire), Some((0, Reject::HeadTooLarge)));
}

/// An HTTP/2 preface is 24 bytes; a `PRI` head past the size limit is refused like any other,
/// whether it comes in one read or in many (the fuzzer found it passed in one read only).
#[test]
fn an_oversized_pri_head_is_refused_however_it_arrives() {
    let mut wire = b"PRI * HTTP/2.0\r\n".to_vec();
    while wire.len() <= MAX_HEAD {
        wire.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    assert_eq!(verdict(&wire), Some((0, Reject::HeadTooLarge)));
    let mut f = Framing::default();
    let cut = wire.chunks(1000).find_map(|piece| f.feed(piece));
    assert_eq!(cut, Some((0, Reject::HeadTooLarge)));
}

#[test]
fn blank_lines_between_requests_are_allowed() {
    assert_eq!(verdict(&[b"\r\n".as_slice(), GET, b"\r\n", GET].concat()), None);
}

/// Wire samples: each a sequence of requests, some refused.
fn samples() -> Vec<Vec<u8>> {
    vec![
        [GET, b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", GET].concat(),
        [b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10 ; x=y\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n".as_slice(), GET].concat(),
        [GET, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"].concat(),
        [GET, GET, b"GET / HTTP/1.1\r\nA: b\nC: d\r\n\r\n"].concat(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest".to_vec(),
        [GET, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", GET].concat(),
        [GET, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"].concat(),
        [b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip,\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".as_slice(), GET].concat(),
    ]
}

/// What a `Transfer-Encoding` list, read as RFC 9112 §6 asks, must give.
fn expected(lines: &[Vec<&str>]) -> Result<(), Reject> {
    let all: Vec<String> = lines.iter().flatten().map(|c| c.trim().to_ascii_lowercase()).collect();
    if all.iter().any(String::is_empty) {
        return Err(Reject::EmptyTransferCoding);
    }
    match all.iter().filter(|c| *c == "chunked").count() {
        0 => Err(Reject::UnsupportedTransferEncoding),
        1 if all.last().is_some_and(|c| c == "chunked") => Ok(()),
        1 => Err(Reject::ChunkedNotLast),
        _ => Err(Reject::ChunkedTwice),
    }
}

fn coding() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["chunked", "Chunked", " chunked\t", "gzip", "deflate", "identity", "", " "])
}

proptest! {
    /// However the bytes are split across reads, the verdict is the same.
    #[test]
    fn verdicts_do_not_depend_on_read_boundaries(which in 0usize..8, cuts in prop::collection::vec(0usize..200, 0..12)) {
        let samples = samples();
        let wire = &samples[which % samples.len()];
        let whole = Framing::default().feed(wire);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.sort_unstable();
        let mut f = Framing::default();
        let mut got = None;
        let mut at = 0;
        for cut in cuts.into_iter().chain([wire.len()]) {
            if let Some(v) = f.feed(&wire[at..cut]) {
                got = got.or(Some(v));
            }
            at = cut;
        }
        prop_assert_eq!(got, whole);
    }

    /// Any `Transfer-Encoding` lines, however split and spelled: accepted only with exactly one
    /// `chunked`, last, and no empty element; refused for the right reason otherwise.
    #[test]
    fn transfer_coding_lists_are_judged_as_one_list(
        lines in prop::collection::vec(prop::collection::vec(coding(), 1..4), 1..4),
        comma in prop::sample::select(vec![",", ", ", " ,\t"]),
    ) {
        let mut wire = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for line in &lines {
            wire.extend_from_slice(format!("Transfer-Encoding: {}\r\n", line.join(comma)).as_bytes());
        }
        wire.extend_from_slice(b"\r\n0\r\n\r\n");
        wire.extend_from_slice(GET);
        let got = Framing::default().feed(&wire);
        prop_assert_eq!(got.map(|(_, why)| why), expected(&lines).err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Framing::default().feed(&bytes);
    }
}

/// Shapes from the request-smuggling research (PortSwigger's desync classes, the severe ones of
/// AWS's http_desync_guardian) that this check itself refuses; the rest (control characters,
/// bare CR, malformed request lines) the server's parser refuses, which the integration tests
/// show end to end.
#[test]
fn desync_lookalikes_and_whitespace_before_the_colon_are_refused() {
    let cases: [(&[u8], Reject); 6] = [
        (b"Content-Length : 5\r\n", Reject::Malformed),
        (b"Transfer-Encoding\t: chunked\r\n", Reject::Malformed),
        (b"Content_Length: 5\r\n", Reject::FramingLookalike),
        (b"transfer_ENCODING: chunked\r\nContent-Length: 5\r\n", Reject::FramingLookalike),
        (b"Transfer-Encoding: chunked\r\nTransfer_Encoding: identity\r\n", Reject::FramingLookalike),
        (b"X: 1\r\n Transfer-Encoding: chunked\r\n", Reject::ObsFold),
    ];
    for (fields, why) in cases {
        let wire = [b"POST / HTTP/1.1\r\nHost: a\r\n".as_slice(), fields, b"\r\nhello"].concat();
        assert_eq!(verdict(&wire), Some((0, why)), "{}", String::from_utf8_lossy(fields));
    }
    // Names that only resemble them, and whitespace after the colon, are fine.
    for fields in [&b"X-Content_Length: 5\r\n"[..], b"Content-Lengths: 5\r\n", b"Content-Length:\t5 \r\n"] {
        let wire = [b"POST / HTTP/1.1\r\nHost: a\r\n".as_slice(), fields, b"\r\n"].concat();
        assert!(
            !matches!(verdict(&wire), Some((0, Reject::FramingLookalike | Reject::Malformed))),
            "{fields:?}"
        );
    }
}
