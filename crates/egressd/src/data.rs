//! Streaming the message body: smtp-proto finds the end and removes dot-stuffing on
//! the way in; [`DotStuffer`] puts it back on the way out. The body is never held
//! whole: it passes through in chunks of at most [`FLUSH_AT`] bytes.

use smtp_proto::request::receiver::DataReceiver;

/// Flush to the destination once this much body is buffered.
pub const FLUSH_AT: usize = 64 * 1024;

/// The DATA phase of one message, as seen from the client.
pub struct IncomingData {
    receiver: DataReceiver,
    /// Unstuffed body not yet passed on. Starts with a CR LF of our own (see `new`).
    buf: Vec<u8>,
    prefix: usize,
    /// Body octets received so far (as sent, stuffed).
    pub received: u64,
}

impl IncomingData {
    /// Ready for the first body byte.
    pub fn new() -> Self {
        // smtp-proto recognises the end marker only after a CR LF it has seen, so a
        // message that is empty (or starts with a dot) would not end. Feed it the
        // CR LF that ended the DATA command; we drop those two bytes on output.
        let mut receiver = DataReceiver::new();
        let mut buf = Vec::with_capacity(8 * 1024);
        receiver.ingest(&mut b"\r\n".iter(), &mut buf);
        IncomingData {
            receiver,
            buf,
            prefix: 2,
            received: 0,
        }
    }

    /// Takes bytes from the client. Returns how many were consumed and whether the
    /// end of the data was reached (bytes after it belong to the next command).
    pub fn ingest(&mut self, bytes: &[u8]) -> (usize, bool) {
        let mut iter = bytes.iter();
        let done = self.receiver.ingest(&mut iter, &mut self.buf);
        let consumed = bytes.len() - iter.as_slice().len();
        self.received += consumed as u64;
        (consumed, done)
    }

    /// Body bytes that can be passed on now. The last three are held back until the
    /// end, because smtp-proto trims the final CR LF from what it already buffered.
    pub fn take_ready(&mut self, done: bool) -> Vec<u8> {
        let keep = if done { 0 } else { 3 };
        if !done && self.buf.len() < FLUSH_AT {
            return Vec::new();
        }
        let end = self.buf.len().saturating_sub(keep);
        if end <= self.prefix {
            return Vec::new();
        }
        let out = self.buf[self.prefix..end].to_vec();
        self.buf.drain(..end);
        self.prefix = 0;
        out
    }
}

/// Re-applies dot-stuffing (RFC 5321 §4.5.2) to an unstuffed body, chunk by chunk.
pub struct DotStuffer {
    at_line_start: bool,
    after_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            after_cr: false,
        }
    }
}

impl DotStuffer {
    /// Appends `chunk`, stuffed, to `out`.
    pub fn stuff(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + 16);
        for &b in chunk {
            if b == b'.' && self.at_line_start {
                out.push(b'.');
            }
            out.push(b);
            self.at_line_start = b == b'\n' && self.after_cr;
            self.after_cr = b == b'\r';
        }
    }

    /// The end-of-data marker, preceded by a line break if the body did not end in one.
    pub fn finish(&self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body as the destination receives it, after one pass through both halves.
    fn relay(wire: &[u8], chunk: usize) -> (Vec<u8>, usize) {
        let mut data = IncomingData::new();
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let end = (pos + chunk).min(wire.len());
            let (used, done) = data.ingest(&wire[pos..end]);
            pos += used;
            stuffer.stuff(&data.take_ready(done), &mut out);
            if done {
                stuffer.finish(&mut out);
                return (out, pos);
            }
            assert!(pos < wire.len(), "no end found");
        }
    }

    #[test]
    fn relays_byte_for_byte_whatever_the_chunking() {
        let wire = b"Subject: x\r\n\r\n..leading dot\r\nmiddle\r\n.\r\nQUIT\r\n";
        for chunk in [1, 2, 3, 7, 1000] {
            let (out, used) = relay(wire, chunk);
            assert_eq!(
                String::from_utf8_lossy(&out),
                "Subject: x\r\n\r\n..leading dot\r\nmiddle\r\n.\r\n",
                "chunk {chunk}"
            );
            assert_eq!(&wire[used..], b"QUIT\r\n");
        }
    }

    #[test]
    fn empty_and_dot_first_messages_end() {
        assert_eq!(relay(b".\r\n", 1).0, b".\r\n");
        assert_eq!(relay(b"..x\r\n.\r\n", 2).0, b"..x\r\n.\r\n");
    }
}
