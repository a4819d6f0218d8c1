//! Destination replies: any octets, in any chunking, parse or fail in words; never a
//! panic, never more consumed than given, and the same replies whatever the chunks.
#![no_main]

use egress_smtp::{parse_one, ResponseReceiver};
use libfuzzer_sys::fuzz_target;

fn replies(data: &[u8], chunk: usize) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    let mut receiver = ResponseReceiver::default();
    let mut buf: Vec<u8> = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let (used, result) = parse_one(&mut receiver, &buf);
            assert!(used <= buf.len());
            buf.drain(..used);
            match result {
                Ok(Some(reply)) => {
                    out.push((reply.code, reply.message));
                    receiver = ResponseReceiver::default();
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(e.to_string().starts_with("malformed SMTP reply"));
                    return out;
                }
            }
            if buf.is_empty() {
                break;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunked = replies(data, usize::from(chunk));
    let whole = replies(data, data.len());
    assert_eq!(chunked, whole);
});
