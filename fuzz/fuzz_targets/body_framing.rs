//! DATA framing: whatever a client sends, what goes to the next hop is one CR LF
//! stream, dot-stuffed, with exactly one end marker — at its end — and chunking
//! never changes it.
#![no_main]

use egress_smtp::{BodyReader, LineEndings};
use libfuzzer_sys::fuzz_target;

fn relay(mode: LineEndings, wire: &[u8], chunk: usize) -> (Vec<u8>, usize, bool, bool) {
    let mut reader = BodyReader::new(mode);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < wire.len() {
        let start = pos;
        let end = (start + chunk).min(wire.len());
        let (used, done) = reader.feed(&wire[start..end], &mut out);
        pos += used;
        if done {
            return (out, pos, true, reader.refused());
        }
        assert_eq!(used, end - start, "input left unread before the end");
    }
    (out, pos, false, reader.refused())
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let mode = match control % 3 {
        0 => LineEndings::Deny,
        1 => LineEndings::Fix,
        _ => LineEndings::Allow,
    };
    let chunk = usize::from(control / 3).max(1);
    let (out, used, done, refused) = relay(mode, wire, chunk);
    let whole = relay(mode, wire, wire.len().max(1));
    assert_eq!(
        (&out, used, done, refused),
        (&whole.0, whole.1, whole.2, whole.3),
        "chunking changed the result"
    );
    // Never a bare CR or LF.
    for (i, b) in out.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR"),
            b'\n' => assert!(i > 0 && out[i - 1] == b'\r', "bare LF"),
            _ => {}
        }
    }
    // Every line that starts with a dot is stuffed, except the end marker, which
    // is last and only present when the body ended.
    let lines: Vec<&[u8]> = out.split_inclusive(|b| *b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        if *line == b".\r\n" {
            assert!(last && done, "an end marker before the end");
        } else if line.starts_with(b".") {
            assert!(line.starts_with(b".."), "an unstuffed dot line");
        }
    }
    if done && !refused {
        assert!(out.ends_with(b".\r\n"));
    }
    if refused {
        assert_eq!(mode, LineEndings::Deny);
    }
});
