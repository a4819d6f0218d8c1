//! RFC 6376 §3.4 canonicalization: what is hashed of a message's headers and
//! body, `simple` or `relaxed`. Pure functions over bytes, tested without I/O.

/// A canonicalization algorithm (KumoMTA's names: `"Relaxed"`, `"Simple"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Canon {
    /// Whitespace and case folded (the default).
    #[default]
    #[serde(alias = "relaxed")]
    Relaxed,
    /// Byte for byte.
    #[serde(alias = "simple")]
    Simple,
}

impl Canon {
    /// The name in the `c=` tag.
    pub fn tag(self) -> &'static str {
        match self {
            Canon::Relaxed => "relaxed",
            Canon::Simple => "simple",
        }
    }
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// One header field, canonicalized, ending in CR LF. `field` is the whole field
/// as in the message: name, colon, value, folding, and its final CR LF.
pub fn header(canon: Canon, field: &[u8]) -> Vec<u8> {
    match canon {
        Canon::Simple => field.to_vec(),
        Canon::Relaxed => {
            let colon = field.iter().position(|b| *b == b':').unwrap_or(field.len());
            let (name, value) = field.split_at(colon);
            let value = value.get(1..).unwrap_or_default();
            let mut out: Vec<u8> = name
                .iter()
                .filter(|b| !is_wsp(**b))
                .map(u8::to_ascii_lowercase)
                .collect();
            out.push(b':');
            // Unfold (CR LF gone), runs of whitespace become one space, none at
            // either end of the value.
            let mut pending_space = false;
            let mut started = false;
            for &b in value {
                if b == b'\r' || b == b'\n' {
                    continue;
                }
                if is_wsp(b) {
                    pending_space = started;
                    continue;
                }
                if pending_space {
                    out.push(b' ');
                    pending_space = false;
                }
                out.push(b);
                started = true;
            }
            out.extend_from_slice(b"\r\n");
            out
        }
    }
}

/// The body, canonicalized: what `bh=` is the hash of.
pub fn body(canon: Canon, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    match canon {
        Canon::Simple => {
            out.extend_from_slice(body);
            if out.is_empty() {
                return b"\r\n".to_vec();
            }
        }
        Canon::Relaxed => {
            for line in lines(body) {
                let mut pending_space = false;
                for &b in line {
                    if is_wsp(b) {
                        pending_space = true;
                        continue;
                    }
                    if pending_space {
                        out.push(b' ');
                        pending_space = false;
                    }
                    out.push(b);
                }
                // Whitespace at the end of a line is dropped.
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    // No empty lines at the end; a non-empty body ends in exactly one CR LF.
    if !out.ends_with(b"\r\n") && !out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    while out.ends_with(b"\r\n\r\n") {
        out.truncate(out.len() - 2);
    }
    if canon == Canon::Relaxed && out == b"\r\n" {
        out.clear();
    }
    out
}

/// The body's lines without their CR LF (a last line without one included).
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr::memmem::find(rest, b"\r\n") {
            Some(end) => {
                let line = &rest[..end];
                rest = &rest[end + 2..];
                Some(line)
            }
            None => Some(std::mem::take(&mut rest)),
        }
    })
}

/// Splits a message into its header fields (each whole, folding and CR LF
/// included) and its body (after the blank line).
pub fn split(message: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while at < message.len() {
        if message[at..].starts_with(b"\r\n") {
            return (fields, &message[at + 2..]);
        }
        // A field runs to the CR LF not followed by whitespace (folding).
        let mut end = at;
        loop {
            match memchr::memmem::find(&message[end..], b"\r\n") {
                Some(i) => {
                    end += i + 2;
                    if end < message.len() && is_wsp(message[end]) {
                        continue;
                    }
                    break;
                }
                None => {
                    end = message.len();
                    break;
                }
            }
        }
        fields.push(&message[at..end]);
        at = end;
    }
    (fields, &[])
}

/// The field's name (before the colon, trailing whitespace off).
pub fn name_of(field: &[u8]) -> &[u8] {
    let colon = field.iter().position(|b| *b == b':').unwrap_or(field.len());
    let mut name = &field[..colon];
    while name.last().is_some_and(|b| is_wsp(*b)) {
        name = &name[..name.len() - 1];
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_header_folds_case_and_whitespace() {
        let field = b"SubJect :  Hello \t there\r\n  again  \r\n";
        assert_eq!(
            header(Canon::Relaxed, field),
            b"subject:Hello there again\r\n"
        );
        assert_eq!(header(Canon::Simple, field), field.to_vec());
    }

    #[test]
    fn bodies_lose_trailing_empty_lines() {
        let b = b"line one \t\r\n  two  words\r\n\r\n\r\n";
        assert_eq!(body(Canon::Relaxed, b), b"line one\r\n two words\r\n");
        assert_eq!(body(Canon::Simple, b), b"line one \t\r\n  two  words\r\n");
        assert_eq!(body(Canon::Simple, b""), b"\r\n");
        assert_eq!(body(Canon::Relaxed, b""), b"");
        assert_eq!(body(Canon::Relaxed, b"\r\n\r\n"), b"");
        assert_eq!(body(Canon::Simple, b"no end"), b"no end\r\n");
    }

    #[test]
    fn split_keeps_folded_fields_whole() {
        let m = b"From: a@b\r\nSubject: one\r\n two\r\nTo: c@d\r\n\r\nbody\r\n";
        let (fields, body) = split(m);
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[1], b"Subject: one\r\n two\r\n");
        assert_eq!(name_of(fields[1]), b"Subject");
        assert_eq!(body, b"body\r\n");
    }
}
