//! BDAT (RFC 3030 CHUNKING): the message as counted chunks instead of DATA's
//! dot-terminated text — no 354 round trip, and the text goes as it is (CR LF
//! lines, not dot-stuffed: a [`BodyReader`](crate::BodyReader) made with
//! [`unstuffed`](crate::BodyReader::unstuffed) gives it). A small message is one
//! write: `BDAT n LAST` and its octets together. With PIPELINING, chunks before
//! the last are not waited for; their replies are read with the last one's.

use super::{is_positive, ClientSession, Phase};
use smtp_proto::Response;
use std::io;
use std::io::Write as _;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin> ClientSession<S> {
    /// Begins a BDAT transfer after the recipients (the destination must offer
    /// CHUNKING: see [`extensions`](Self::extensions)). Nothing is written yet.
    pub fn start_bdat(&mut self) -> io::Result<()> {
        self.expect(Phase::Mail, "BDAT")?;
        if !self.extensions.chunking {
            return Err(self.misuse("BDAT to a destination that does not offer CHUNKING"));
        }
        if self.lmtp {
            // LMTP's per-recipient replies after BDAT LAST are not read here.
            return Err(self.misuse("BDAT over LMTP"));
        }
        self.phase = Phase::Chunks;
        self.chunk_replies_pending = 0;
        self.chunk_refused = None;
        Ok(())
    }

    /// Sends `chunk` (message text, not dot-stuffed) as `BDAT n` — `BDAT n LAST`
    /// when `last` — in one write with the command. Without PIPELINING a chunk
    /// before the last is answered before this returns. After `last`, read the
    /// outcome with [`end_of_data_reply`](Self::end_of_data_reply).
    pub async fn bdat(&mut self, chunk: &[u8], last: bool) -> io::Result<()> {
        self.expect(Phase::Chunks, "BDAT")?;
        let mut wire = std::mem::take(&mut self.chunk_wire);
        wire.clear();
        wire.reserve(chunk.len() + 24);
        let _ = write!(
            wire,
            "BDAT {}{}\r\n",
            chunk.len(),
            if last { " LAST" } else { "" }
        );
        wire.extend_from_slice(chunk);
        let written = self
            .write(&wire, self.timeouts.data, "sending the message (BDAT)")
            .await;
        // Keep the buffer for the next chunk, unless one large message grew it.
        if wire.capacity() <= 128 * 1024 {
            self.chunk_wire = wire;
        }
        written?;
        if !last {
            self.chunk_replies_pending += 1;
            if !(self.extensions.pipelining && self.pipelining_allowed) {
                self.chunk_replies().await?;
            }
        }
        Ok(())
    }

    /// Reads the replies to the chunks sent so far, keeping the first refusal.
    pub(super) async fn chunk_replies(&mut self) -> io::Result<()> {
        while self.chunk_replies_pending > 0 {
            let reply = self
                .read(self.timeouts.data, "waiting for the reply to a BDAT chunk")
                .await?;
            self.chunk_replies_pending -= 1;
            if !is_positive(&reply) && self.chunk_refused.is_none() {
                self.chunk_refused = Some(reply);
            }
        }
        Ok(())
    }

    /// After the last chunk: the earlier chunks' replies, then the last one's — the
    /// first refusal among them speaks for the message. A session whose transfer
    /// was refused midway is not reused (what the destination kept of the
    /// transaction is not known).
    pub(super) async fn bdat_final_reply(&mut self) -> io::Result<Response<String>> {
        self.chunk_replies().await?;
        let last = self
            .read(
                self.timeouts.data_dot,
                "waiting for the reply to the message",
            )
            .await?;
        match self.chunk_refused.take() {
            Some(refused) => {
                self.phase = Phase::Broken;
                Ok(refused)
            }
            None => {
                self.phase = Phase::Ready;
                Ok(last)
            }
        }
    }
}
