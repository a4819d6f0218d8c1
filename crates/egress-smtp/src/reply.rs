//! SMTP replies: the ones we make, and the ones we read from destinations.

use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::Response;
use std::fmt;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A reply to send to a client: code, enhanced status code, text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit code.
    pub code: u16,
    /// Enhanced status code (RFC 3463), when there is one.
    pub esc: Option<[u8; 3]>,
    /// Text, one entry per line.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply of ours. Newlines in `text` (an error with a traceback) are
    /// cut: the first line goes to the client, the whole story goes to the log.
    pub fn new(code: u16, esc: [u8; 3], text: impl AsRef<str>) -> Reply {
        let first = text.as_ref().lines().next().unwrap_or_default();
        let clean: String = first
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Reply {
            code,
            esc: Some(esc),
            lines: vec![clean],
        }
    }

    /// A destination's reply, relayed as it came.
    pub fn relayed(response: &Response<String>) -> Reply {
        let esc = (response.esc[0] != 0).then_some(response.esc);
        let lines = response
            .message
            .split('\n')
            .map(|l| l.chars().filter(|c| !c.is_control()).collect())
            .collect();
        Reply {
            code: response.code,
            esc,
            lines,
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The reply on the wire, CRLF-terminated.
    pub fn to_wire(&self) -> String {
        let mut out = Vec::new();
        self.write_wire(&mut out);
        // Every part is ASCII digits or a line made of `char`s.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the reply as it goes on the wire to `out` — what a session's output
    /// buffer takes, with no string built in between (a reply goes out for every
    /// command).
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            push_code(out, self.code);
            out.push(if i == last { b' ' } else { b'-' });
            if let Some(esc) = self.esc {
                for (j, part) in esc.iter().enumerate() {
                    if j > 0 {
                        out.push(b'.');
                    }
                    push_code(out, u16::from(*part));
                }
                out.push(b' ');
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends a number in decimal (a reply code or an enhanced status part).
fn push_code(out: &mut Vec<u8>, n: u16) {
    let mut digits = [0u8; 5];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some([a, b, c]) = self.esc {
            write!(f, " {a}.{b}.{c}")?;
        }
        write!(f, " {}", self.lines.join(" / "))
    }
}

/// Largest reply we read from a destination; more is a broken or hostile server.
const MAX_REPLY: usize = 64 * 1024;

/// Reads replies from a destination with smtp-proto's parser, keeping any octets
/// that arrive after a reply for the next one. It does not own the stream, so the
/// session can write on the same stream (plain TCP or TLS) between reads.
#[derive(Debug, Default)]
pub struct ReplyBuffer {
    buf: Vec<u8>,
    start: usize,
}

impl ReplyBuffer {
    /// Octets received but not yet part of a reply read. A session in a clean state
    /// has none: anything here answers a command nobody is waiting for.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next reply from `stream`, within `timeout`.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
        timeout: Duration,
    ) -> io::Result<Response<String>> {
        tokio::time::timeout(timeout, self.read_inner(stream))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply within {}", crate::words::duration(timeout)),
                )
            })?
    }

    async fn read_inner<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
    ) -> io::Result<Response<String>> {
        let mut receiver = ResponseReceiver::default();
        loop {
            if self.start < self.buf.len() {
                match parse_one(&mut receiver, &self.buf[self.start..]) {
                    (used, Ok(Some(response))) => {
                        self.start += used;
                        return Ok(response);
                    }
                    (used, Ok(None)) => self.start += used,
                    (_, Err(e)) => return Err(e),
                }
            }
            if self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
            if self.buf.len() > MAX_REPLY {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "SMTP reply longer than 64 KiB",
                ));
            }
            self.buf.reserve(4096);
            let n = stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the destination",
                ));
            }
        }
    }
}

/// Runs the parser over `bytes`: how many octets it took, and a reply when one is
/// complete (`None`: it needs more). A malformed reply is an error in words.
pub fn parse_one(
    receiver: &mut ResponseReceiver,
    bytes: &[u8],
) -> (usize, io::Result<Option<Response<String>>>) {
    let mut iter = bytes.iter();
    let result = receiver.parse(&mut iter);
    let used = bytes.len() - iter.as_slice().len();
    let result = match result {
        Ok(response) => Ok(Some(response)),
        Err(smtp_proto::Error::NeedsMoreData { .. }) => Ok(None),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed SMTP reply: {}", crate::words::parse_error(&e)),
        )),
    };
    (used, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        assert_eq!(
            Reply::new(451, [4, 4, 1], "no route\nstack traceback").to_wire(),
            "451 4.4.1 no route\r\n"
        );
        let multi = Reply {
            code: 250,
            esc: None,
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(multi.to_wire(), "250-a\r\n250 b\r\n");
        let coded = Reply {
            code: 538,
            esc: Some([5, 7, 11]),
            lines: vec!["one".into(), "two".into()],
        };
        assert_eq!(coded.to_wire(), "538-5.7.11 one\r\n538 5.7.11 two\r\n");
        let bare = Reply {
            code: 221,
            esc: None,
            lines: vec![],
        };
        assert_eq!(bare.to_wire(), "221 \r\n");
        let mut out = b"kept".to_vec();
        coded.write_wire(&mut out);
        assert!(out.starts_with(b"kept538-5.7.11 one"));
    }

    #[tokio::test]
    async fn reads_multiline_and_keeps_the_rest() {
        let mut data: &[u8] = b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n220 next\r\n";
        let mut r = ReplyBuffer::default();
        let first = r.read(&mut data, Duration::from_secs(1)).await.unwrap();
        assert_eq!(first.code, 250);
        assert_eq!(first.message, "mx.example\nPIPELINING\nSIZE 100");
        assert_eq!(r.pending(), 10);
        let next = r.read(&mut data, Duration::from_secs(1)).await.unwrap();
        assert_eq!(next.code, 220);
        assert_eq!(r.pending(), 0);
        assert!(r.read(&mut data, Duration::from_secs(1)).await.is_err());
    }

    #[tokio::test]
    async fn a_malformed_reply_is_described_in_words() {
        let mut data: &[u8] = b"2x0 what\r\n";
        let e = ReplyBuffer::default()
            .read(&mut data, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(!e.to_string().contains("{"), "{e}");
        assert!(e.to_string().starts_with("malformed SMTP reply"), "{e}");
    }
}
