//! DATA framing, exact in both directions (RFC 5321 §4.1.1.4, §4.5.2).
//!
//! [`BodyReader`] reads a message body as a client sends it after `354` and writes
//! the form that goes to the next hop, in one pass:
//!
//! - Only CR LF `.` CR LF ends the body. A `.` after a bare LF, or `.` CR CR LF, is
//!   body text — never an end, on our side or (because of the next rule) on the
//!   destination's.
//! - What goes out has CR LF line endings only, and every line that starts with `.`
//!   is dot-stuffed. A destination that ends lines at a bare LF (as Postfix did before
//!   its smuggling fix) therefore sees exactly the lines we saw.
//! - A bare CR or LF is reported ([`BodyReader::invalid`]), and the caller decides what
//!   that means ([`LineEndings`]).
//!
//! We write this instead of using smtp-proto's `DataReceiver` (0.1.7): its end-of-data
//! state is not reset by a CR, so `CR LF . CR CR LF` ends DATA there — an SMTP smuggling
//! hole — and it leaves bare LFs in the body for the next hop to interpret.

/// What to do with a bare CR or LF in a body (KumoMTA's `invalid_line_endings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineEndings {
    /// Refuse the message (the default).
    #[default]
    Deny,
    /// Accept it; each bare CR or LF becomes CR LF.
    Fix,
    /// Accept it. The next hop still gets CR LF line endings: a bare line ending on
    /// the wire is exactly what smuggling exploits, so we never send one.
    Allow,
}

/// The first bare line ending found in a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidEnding {
    /// `"LF"` or `"CR"`.
    pub kind: &'static str,
    /// Offset of the offending octet, counted from the first body octet.
    pub offset: u64,
}

impl std::fmt::Display for InvalidEnding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a bare {} at octet {} of the message (SMTP lines end with CR LF)",
            self.kind, self.offset
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After CR LF (or at the very start, which follows the DATA command's CR LF).
    LineStart,
    /// A `.` at the start of a line: stuffing, or the first half of the end marker.
    Dot,
    /// `.` CR at the start of a line: the end marker if LF follows.
    DotCr,
    /// Inside a line.
    Text,
    /// Inside a line, after a CR.
    Cr,
    /// The end marker has been read.
    Done,
}

/// Reads one message body from a client and writes it, framed, for the next hop.
///
/// ```
/// use egress_smtp::{BodyReader, LineEndings};
/// let mut reader = BodyReader::new(LineEndings::Deny);
/// let mut out = Vec::new();
/// let wire = b"Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
/// let (used, done) = reader.feed(wire, &mut out);
/// assert!(done);
/// assert_eq!(&wire[used..], b"QUIT\r\n");
/// assert_eq!(out, b"Subject: hi\r\n\r\n..dot\r\n.\r\n");
///
/// // A dot after a bare LF does not end the message, and is stuffed on the way out.
/// let mut reader = BodyReader::new(LineEndings::Fix);
/// let mut out = Vec::new();
/// reader.feed(b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n", &mut out);
/// assert_eq!(out, b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n");
/// assert_eq!(reader.invalid().unwrap().kind, "LF");
/// ```
#[derive(Debug, Clone)]
pub struct BodyReader {
    mode: LineEndings,
    /// Write DATA's framing (dot-stuffed, ending `.` CR LF); else the bare text,
    /// for BDAT.
    stuffed: bool,
    state: State,
    /// The last octet written out was the LF of a CR LF (or nothing was written).
    out_line_start: bool,
    invalid: Option<InvalidEnding>,
    received: u64,
}

impl BodyReader {
    /// Ready for the first body octet (the DATA command's CR LF has been read).
    pub fn new(mode: LineEndings) -> Self {
        BodyReader {
            mode,
            stuffed: true,
            state: State::LineStart,
            out_line_start: true,
            invalid: None,
            received: 0,
        }
    }

    /// Reads as [`new`](Self::new) does, but writes the message text itself — CR
    /// LF lines, no dot-stuffing, no end marker — as BDAT (RFC 3030) sends it.
    ///
    /// ```
    /// use egress_smtp::{BodyReader, LineEndings};
    /// let mut reader = BodyReader::unstuffed(LineEndings::Fix);
    /// let mut out = Vec::new();
    /// let (_, done) = reader.feed(b"Subject: hi\r\n\r\n..dot\nx\r\n.\r\n", &mut out);
    /// assert!(done);
    /// assert_eq!(out, b"Subject: hi\r\n\r\n.dot\r\nx\r\n");
    /// ```
    pub fn unstuffed(mode: LineEndings) -> Self {
        BodyReader {
            stuffed: false,
            ..BodyReader::new(mode)
        }
    }

    /// Octets read so far, as the client sent them (stuffed, end marker included).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The first bare CR or LF, if any.
    pub fn invalid(&self) -> Option<InvalidEnding> {
        self.invalid
    }

    /// The body must be refused: it has a bare line ending and the mode is `Deny`.
    pub fn refused(&self) -> bool {
        self.invalid.is_some() && self.mode == LineEndings::Deny
    }

    /// The end marker has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads from `input` up to and including the end marker, appending the framed
    /// form to `out` (ending with `.` CR LF once done). Returns the octets consumed
    /// and whether the end was reached; octets after the end are the next command's.
    /// Once the body is [refused](Self::refused), nothing more is written to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if self.state == State::Text {
                // The common case: whole lines that need no decision, in one copy.
                let rest = &input[i..];
                let n = plain_prefix(rest);
                if n > 0 {
                    self.text(&rest[..n], out);
                    i += n;
                    continue;
                }
            }
            let b = input[i];
            self.step(b, self.received + i as u64, out);
            i += 1;
        }
        self.received += i as u64;
        (i, self.state == State::Done)
    }

    fn step(&mut self, b: u8, offset: u64, out: &mut Vec<u8>) {
        self.state = match (self.state, b) {
            (State::LineStart, b'.') => State::Dot,
            (State::LineStart, _) => return self.in_text(b, offset, out),
            (State::Dot, b'\r') => State::DotCr,
            // The dot was stuffing (or a client's unstuffed dot): drop it.
            (State::Dot, _) => return self.in_text(b, offset, out),
            (State::DotCr, b'\n') => {
                if self.stuffed {
                    self.emit(b".\r\n", out);
                }
                State::Done
            }
            // `.` CR then something else: the dot was stuffing, the CR is text.
            (State::DotCr, _) => {
                self.state = State::Cr;
                return self.step(b, offset, out);
            }
            (State::Text, _) => return self.in_text(b, offset, out),
            (State::Cr, b'\n') => {
                self.emit(b"\r\n", out);
                State::LineStart
            }
            (State::Cr, _) => {
                // The CR before this octet was bare.
                self.bare("CR", offset.saturating_sub(1), out);
                self.state = State::Text;
                return self.in_text(b, offset, out);
            }
            (State::Done, _) => State::Done,
        };
    }

    /// One octet inside a line.
    fn in_text(&mut self, b: u8, offset: u64, out: &mut Vec<u8>) {
        self.state = match b {
            b'\r' => State::Cr,
            // A bare LF breaks the line for the next hop, but it never starts a line
            // here: what follows can neither end the body nor be unstuffed.
            b'\n' => {
                self.bare("LF", offset, out);
                State::Text
            }
            _ => {
                self.text(&[b], out);
                State::Text
            }
        };
    }

    /// Text octets (no CR or LF but in CR LF pairs followed by an ordinary octet: see
    /// [`plain_prefix`]), stuffed when they start a line on the way out.
    fn text(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.state = State::Text;
        if self.refused() {
            return;
        }
        if self.stuffed && self.out_line_start && bytes[0] == b'.' {
            out.push(b'.');
        }
        out.extend_from_slice(bytes);
        self.out_line_start = false;
    }

    fn bare(&mut self, kind: &'static str, offset: u64, out: &mut Vec<u8>) {
        if self.invalid.is_none() {
            self.invalid = Some(InvalidEnding { kind, offset });
        }
        self.emit(b"\r\n", out);
    }

    /// A line break or the end marker.
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if !self.refused() {
            out.extend_from_slice(bytes);
            self.out_line_start = true;
        }
    }
}

/// The length of the start of `text` (read mid-line) that passes through as it
/// is: text octets, and CR LF line breaks each followed by an ordinary octet (not
/// `.`, CR or LF — those need the state machine: unstuffing, the end marker, bare
/// endings). A typical body is one such run per read.
fn plain_prefix(text: &[u8]) -> usize {
    let mut end = 0;
    loop {
        let rest = &text[end..];
        let Some(n) = memchr::memchr2(b'\r', b'\n', rest) else {
            return text.len();
        };
        match rest.get(n..n + 3) {
            Some([b'\r', b'\n', next]) if !matches!(next, b'.' | b'\r' | b'\n') => end += n + 3,
            _ => return end + n,
        }
    }
}

/// DATA's framing for a message held as text (CR LF lines, not stuffed): a `.`
/// doubled at the start of each line, a last line ended, the `.` CR LF end marker.
///
/// ```
/// assert_eq!(egress_smtp::stuff(b"Subject: x\r\n\r\n.dot\r\nlast"), b"Subject: x\r\n\r\n..dot\r\nlast\r\n.\r\n");
/// ```
pub fn stuff(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 64 + 5);
    let mut line_start = true;
    for &b in text {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `wire` in chunks of `chunk` octets; returns what goes out, the octets
    /// consumed and the reader.
    fn relay(mode: LineEndings, wire: &[u8], chunk: usize) -> (Vec<u8>, usize, BodyReader) {
        let mut reader = BodyReader::new(mode);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let end = (pos + chunk).min(wire.len());
            let (used, done) = reader.feed(&wire[pos..end], &mut out);
            pos += used;
            if done {
                break;
            }
        }
        (out, pos, reader)
    }

    #[test]
    fn a_clean_body_passes_byte_for_byte_whatever_the_chunking() {
        let wire = b"Subject: x\r\n\r\n..leading dot\r\nmiddle\r\n.\r\nQUIT\r\n";
        for chunk in [1, 2, 3, 7, 1000] {
            let (out, used, reader) = relay(LineEndings::Deny, wire, chunk);
            assert_eq!(out, &wire[..used], "chunk {chunk}");
            assert_eq!(&wire[used..], b"QUIT\r\n");
            assert!(reader.invalid().is_none());
        }
    }

    #[test]
    fn plain_runs_stop_where_a_decision_is_due() {
        assert_eq!(plain_prefix(b"abc"), 3);
        assert_eq!(plain_prefix(b"ab\r\ncd\r\nef"), 10);
        // Each of these needs the state machine at the line break.
        assert_eq!(plain_prefix(b"ab\r\n.cd"), 2);
        assert_eq!(plain_prefix(b"ab\r\n\r\n"), 2);
        assert_eq!(plain_prefix(b"ab\nc"), 2);
        assert_eq!(plain_prefix(b"ab\rc"), 2);
        // A break at the end of the input: what follows is not known yet.
        assert_eq!(plain_prefix(b"ab\r\n"), 2);
        assert_eq!(plain_prefix(b"\r\nx"), 3);
    }

    #[test]
    fn empty_and_dot_first_messages_end() {
        assert_eq!(relay(LineEndings::Deny, b".\r\n", 1).0, b".\r\n");
        assert_eq!(
            relay(LineEndings::Deny, b"..x\r\n.\r\n", 2).0,
            b"..x\r\n.\r\n"
        );
        // An unstuffed leading dot from a sloppy client is stuffed on the way out.
        assert_eq!(relay(LineEndings::Deny, b".x\r\n.\r\n", 1).0, b"x\r\n.\r\n");
    }

    /// CVE-2023-51764 and friends: `\n.\r\n` and `\n.\n` after a line.
    #[test]
    fn a_dot_after_a_bare_lf_never_ends_the_body() {
        for smuggle in [&b"\n.\r\n"[..], b"\n.\n", b"\r\n.\n", b"\r.\r\n"] {
            let mut wire = b"Subject: x\r\n\r\nhello".to_vec();
            wire.extend_from_slice(smuggle);
            wire.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            let end = wire.len();
            wire.extend_from_slice(b".\r\n");
            let (out, used, reader) = relay(LineEndings::Fix, &wire, 1);
            assert_eq!(used, wire.len(), "{smuggle:?}: ended early");
            assert!(reader.invalid().is_some(), "{smuggle:?}");
            assert_no_bare_endings(&out);
            assert_eq!(count_ends(&out), 1, "{smuggle:?}: {out:?}");
            assert!(out.ends_with(b"MAIL FROM:<evil@x>\r\n.\r\n"));
            let (_, used, reader) = relay(LineEndings::Deny, &wire, 1000);
            assert_eq!(used, end + 3);
            assert!(reader.refused());
        }
    }

    /// smtp-proto 0.1.7 ends DATA at `\r\n.\r\r\n`; we do not.
    #[test]
    fn dot_cr_cr_lf_is_not_the_end() {
        let wire = b"hi\r\n.\r\r\nMAIL FROM:<evil@x>\r\n.\r\n";
        let (out, used, reader) = relay(LineEndings::Fix, wire, 1);
        assert_eq!(used, wire.len());
        assert_eq!(out, b"hi\r\n\r\n\r\nMAIL FROM:<evil@x>\r\n.\r\n");
        assert_eq!(
            reader.invalid(),
            Some(InvalidEnding {
                kind: "CR",
                offset: 5
            })
        );
    }

    #[test]
    fn deny_stops_writing_at_the_first_bare_ending_but_reads_to_the_end() {
        let wire = b"one\r\ntwo\nthree\r\n.\r\nNOOP\r\n";
        let (out, used, reader) = relay(LineEndings::Deny, wire, 4);
        assert_eq!(out, b"one\r\ntwo");
        assert_eq!(&wire[used..], b"NOOP\r\n");
        assert_eq!(
            reader.invalid().unwrap().to_string(),
            "a bare LF at octet 8 of the message (SMTP lines end with CR LF)"
        );
    }

    fn count_ends(out: &[u8]) -> usize {
        let mut n = usize::from(out.starts_with(b".\r\n"));
        n += out.windows(5).filter(|w| w == b"\r\n.\r\n").count();
        n
    }

    fn assert_no_bare_endings(out: &[u8]) {
        for (i, b) in out.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i} in {out:?}"),
                b'\n' => assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i} in {out:?}"),
                _ => {}
            }
        }
    }

    /// Unstuffs a well-formed output the way a strict destination would: the lines
    /// it delivers.
    fn destination_lines(out: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for line in out.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line == b"." {
                break;
            }
            lines.push(line.strip_prefix(b".").unwrap_or(line).to_vec());
        }
        lines
    }

    proptest! {
        /// Whatever a client sends, what goes out is one CR LF stream with exactly
        /// one end marker, at the end; chunking changes nothing.
        #[test]
        fn output_is_always_one_clean_message(
            body in proptest::collection::vec(prop_oneof![
                Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), Just(0u8), Just(0xffu8)
            ], 0..200),
            chunk in 1usize..17,
        ) {
            let mut wire = body.clone();
            wire.extend_from_slice(b"\r\n.\r\n");
            let (out, used, reader) = relay(LineEndings::Fix, &wire, chunk);
            let (whole, used_whole, _) = relay(LineEndings::Fix, &wire, wire.len());
            prop_assert_eq!(&out, &whole);
            prop_assert_eq!(used, used_whole);
            prop_assert!(reader.is_done());
            assert_no_bare_endings(&out);
            prop_assert_eq!(count_ends(&out), 1);
            prop_assert!(out.ends_with(b".\r\n"));
        }

        /// For BDAT the text is exactly the lines a destination unstuffing the DATA
        /// form would deliver, in any chunking.
        #[test]
        fn unstuffed_is_the_delivered_lines(
            body in proptest::collection::vec(prop_oneof![
                Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')
            ], 0..200),
            chunk in 1usize..17,
        ) {
            let mut wire = body.clone();
            wire.extend_from_slice(b"\r\n.\r\n");
            let (stuffed, used, _) = relay(LineEndings::Fix, &wire, wire.len());
            let mut reader = BodyReader::unstuffed(LineEndings::Fix);
            let mut bare = Vec::new();
            let mut pos = 0;
            while pos < wire.len() && !reader.is_done() {
                let end = (pos + chunk).min(wire.len());
                pos += reader.feed(&wire[pos..end], &mut bare).0;
            }
            prop_assert_eq!(pos, used);
            let expected: Vec<u8> = destination_lines(&stuffed)
                .into_iter()
                .flat_map(|mut l| { l.extend_from_slice(b"\r\n"); l })
                .collect();
            prop_assert_eq!(bare, expected);
        }

        /// A body with only CR LF line endings, stuffed by the client, is delivered
        /// as the client's lines.
        #[test]
        fn clean_bodies_keep_their_lines(
            lines in proptest::collection::vec("[.a-z ]{0,6}", 0..12),
        ) {
            let mut wire = Vec::new();
            for line in &lines {
                if line.starts_with('.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(line.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b".\r\n");
            let (out, used, reader) = relay(LineEndings::Deny, &wire, 3);
            prop_assert_eq!(used, wire.len());
            prop_assert!(reader.invalid().is_none());
            prop_assert_eq!(&out, &wire);
            let delivered = destination_lines(&out);
            let expected: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
            prop_assert_eq!(delivered, expected);
        }
    }
}
