//! A transaction on the session: MAIL FROM (with the first RCPT, and a pending
//! RSET, in one write when pipelining), RCPT, DATA and the message text, the
//! reply or LMTP's replies to its end, and RSET.

use super::{is_positive, one_line, ClientSession, Phase};
use smtp_proto::Response;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin> ClientSession<S> {
    /// `MAIL FROM:{path}` (the path with its angle brackets), with BODY=8BITMIME
    /// when `body_8bit` and the destination offers it. The destination's reply;
    /// a refusal leaves the session ready for another MAIL.
    pub async fn mail(&mut self, path: &str, body_8bit: bool) -> io::Result<Response<String>> {
        self.expect(Phase::Ready, "MAIL FROM")?;
        let line = self.mail_line(path, body_8bit);
        let reply = if self.rset_pending.is_some() && self.pipelining() {
            let wire = format!("RSET\r\n{line}\r\n");
            self.write(wire.as_bytes(), self.timeouts.mail_from, "MAIL FROM")
                .await?;
            self.rset_reply().await?;
            self.read(self.timeouts.mail_from, "MAIL FROM").await?
        } else {
            self.rset_alone().await?;
            self.command(&line, self.timeouts.mail_from, "MAIL FROM")
                .await?
        };
        self.accepted = 0;
        if is_positive(&reply) {
            self.phase = Phase::Mail;
        }
        Ok(reply)
    }

    /// The pending RSET on its own (not pipelined), if there is one.
    async fn rset_alone(&mut self) -> io::Result<()> {
        if let Some(timeout) = self.rset_pending {
            let line = b"RSET\r\n";
            self.write(line, timeout, "RSET").await?;
            self.rset_reply().await?;
        }
        Ok(())
    }

    /// Reads the reply to the pending RSET; anything but 2xx breaks the session.
    async fn rset_reply(&mut self) -> io::Result<()> {
        let Some(timeout) = self.rset_pending.take() else {
            return Ok(());
        };
        let reply = self.read(timeout, "RSET").await?;
        if !is_positive(&reply) {
            self.phase = Phase::Broken;
            return Err(io::Error::other(format!(
                "RSET: {} {}",
                reply.code,
                one_line(&reply.message)
            )));
        }
        Ok(())
    }

    /// The MAIL FROM command line, with BODY=8BITMIME when the body is 8-bit and
    /// the destination offers it.
    fn mail_line(&self, path: &str, body_8bit: bool) -> String {
        match body_8bit && self.extensions.eight_bit_mime {
            true => format!("MAIL FROM:{path} BODY=8BITMIME"),
            false => format!("MAIL FROM:{path}"),
        }
    }

    /// `MAIL FROM` and the first `RCPT TO` (both paths with angle brackets): in one
    /// write when the destination offers PIPELINING (RFC 2920), saving a round trip
    /// per transaction; one after the other otherwise. The RCPT reply is `None` when
    /// MAIL was refused (pipelined, the RCPT's own answer to a command without a
    /// transaction is read and dropped, so the dialogue stays in step).
    pub async fn mail_rcpt(
        &mut self,
        path: &str,
        body_8bit: bool,
        rcpt: &str,
    ) -> io::Result<(Response<String>, Option<Response<String>>)> {
        let (mail, rcpts) = self.mail_rcpts(path, body_8bit, &[rcpt]).await?;
        Ok((mail, rcpts.into_iter().next()))
    }

    /// `MAIL FROM` and every `RCPT TO` of `rcpts`, in one write with PIPELINING;
    /// MAIL's reply and one reply per recipient, in order (none when MAIL was
    /// refused: see [`mail_rcpt`](Self::mail_rcpt)).
    pub async fn mail_rcpts(
        &mut self,
        path: &str,
        body_8bit: bool,
        rcpts: &[&str],
    ) -> io::Result<(Response<String>, Vec<Response<String>>)> {
        if !self.pipelining() {
            let mail = self.mail(path, body_8bit).await?;
            if !is_positive(&mail) {
                return Ok((mail, Vec::new()));
            }
            let mut replies = Vec::with_capacity(rcpts.len());
            for rcpt in rcpts {
                replies.push(self.rcpt(rcpt).await?);
            }
            return Ok((mail, replies));
        }
        self.expect(Phase::Ready, "MAIL FROM")?;
        let mut wire = String::with_capacity(64 + 48 * rcpts.len());
        if self.rset_pending.is_some() {
            wire.push_str("RSET\r\n");
        }
        wire.push_str(&self.mail_line(path, body_8bit));
        wire.push_str("\r\n");
        for rcpt in rcpts {
            wire.push_str("RCPT TO:");
            wire.push_str(rcpt);
            wire.push_str("\r\n");
        }
        self.write(wire.as_bytes(), self.timeouts.mail_from, "MAIL FROM")
            .await?;
        self.rset_reply().await?;
        self.accepted = 0;
        let mail = self.read(self.timeouts.mail_from, "MAIL FROM").await?;
        if !is_positive(&mail) {
            // The RCPTs' answers to commands without a transaction are read and
            // dropped to keep the dialogue in step. A destination that refuses MAIL
            // and closes (Yahoo's `421 4.7.0 [TSS04]`) sends none: its reply to MAIL
            // is the answer either way, and the failed read leaves the session
            // broken, so it is only closed.
            for _ in rcpts {
                if self.read(self.timeouts.rcpt_to, "RCPT TO").await.is_err() {
                    break;
                }
            }
            return Ok((mail, Vec::new()));
        }
        self.phase = Phase::Mail;
        let replies = self.rcpt_replies(rcpts.len()).await?;
        Ok((mail, replies))
    }

    /// `RCPT TO` for each of `paths`, in one write with PIPELINING (one after the
    /// other otherwise); the replies in order.
    pub async fn rcpts(&mut self, paths: &[&str]) -> io::Result<Vec<Response<String>>> {
        if !self.pipelining() || paths.len() < 2 {
            let mut replies = Vec::with_capacity(paths.len());
            for path in paths {
                replies.push(self.rcpt(path).await?);
            }
            return Ok(replies);
        }
        self.expect(Phase::Mail, "RCPT TO")?;
        let wire: String = paths.iter().map(|p| format!("RCPT TO:{p}\r\n")).collect();
        self.write(wire.as_bytes(), self.timeouts.rcpt_to, "RCPT TO")
            .await?;
        self.rcpt_replies(paths.len()).await
    }

    async fn rcpt_replies(&mut self, n: usize) -> io::Result<Vec<Response<String>>> {
        let mut replies = Vec::with_capacity(n);
        for _ in 0..n {
            let reply = self.read(self.timeouts.rcpt_to, "RCPT TO").await?;
            self.accepted += usize::from(is_positive(&reply));
            replies.push(reply);
        }
        Ok(replies)
    }

    /// `RCPT TO:{path}`; the destination's reply.
    pub async fn rcpt(&mut self, path: &str) -> io::Result<Response<String>> {
        self.expect(Phase::Mail, "RCPT TO")?;
        let reply = self
            .command(&format!("RCPT TO:{path}"), self.timeouts.rcpt_to, "RCPT TO")
            .await?;
        self.accepted += usize::from(is_positive(&reply));
        Ok(reply)
    }

    /// `DATA`; after a 354 the body may be written, anything else is the
    /// destination's refusal (the transaction stays open until RSET).
    pub async fn data(&mut self) -> io::Result<Response<String>> {
        self.send_data().await?;
        self.data_reply().await
    }

    /// Writes `DATA` without waiting for its reply, so a relay can tell its own
    /// client to go ahead at the same time and read the destination's answer
    /// ([`data_reply`](Self::data_reply)) only when message text is ready to go —
    /// one round trip off every message.
    pub async fn send_data(&mut self) -> io::Result<()> {
        self.expect(Phase::Mail, "DATA")?;
        self.write(b"DATA\r\n", self.timeouts.data, "DATA").await?;
        self.phase = Phase::DataSent;
        Ok(())
    }

    /// The reply to a [`send_data`](Self::send_data): after a 354 the body may be
    /// written, anything else is the destination's refusal (the transaction stays
    /// open until RSET).
    pub async fn data_reply(&mut self) -> io::Result<Response<String>> {
        self.expect(Phase::DataSent, "the reply to DATA")?;
        let reply = self.read(self.timeouts.data, "DATA").await?;
        self.phase = match reply.code {
            354 => Phase::Body,
            _ => Phase::Mail,
        };
        Ok(reply)
    }

    /// Writes framed body octets (dot-stuffed, CR LF only; the caller's
    /// [`BodyReader`](crate::BodyReader) makes them), the end marker last.
    pub async fn write_body(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.expect(Phase::Body, "message text")?;
        self.write(bytes, self.timeouts.data, "sending the message")
            .await
    }

    /// The replies to the end of the message: one for SMTP; for LMTP one per
    /// recipient the destination accepted, in RCPT order (RFC 2033 §4.2). The
    /// transaction is over whatever the codes: the session is ready again.
    pub async fn end_of_data_replies(&mut self) -> io::Result<Vec<Response<String>>> {
        if self.phase == Phase::Chunks {
            return Ok(vec![self.bdat_final_reply().await?]);
        }
        if self.lmtp {
            self.lmtp_replies().await
        } else {
            Ok(vec![self.final_reply().await?])
        }
    }

    async fn lmtp_replies(&mut self) -> io::Result<Vec<Response<String>>> {
        self.expect(Phase::Body, "the replies to the message")?;
        let mut replies = Vec::with_capacity(self.accepted);
        for _ in 0..self.accepted.max(1) {
            replies.push(
                self.read(
                    self.timeouts.data_dot,
                    "waiting for the replies to the message",
                )
                .await?,
            );
        }
        self.phase = Phase::Ready;
        Ok(replies)
    }

    /// The reply to the end of the message (whose marker the caller has written).
    /// The transaction is over whatever the code: the session is ready again. For
    /// LMTP with more than one recipient use
    /// [`end_of_data_replies`](Self::end_of_data_replies).
    pub async fn end_of_data_reply(&mut self) -> io::Result<Response<String>> {
        if self.phase == Phase::Chunks {
            return self.bdat_final_reply().await;
        }
        if self.lmtp && self.accepted > 1 {
            // Every reply is read so the session stays in step; the first refusal
            // (else the first acceptance) speaks for the message.
            let replies = self.lmtp_replies().await?;
            let first_refusal = replies.iter().position(|r| !is_positive(r)).unwrap_or(0);
            return Ok(replies
                .into_iter()
                .nth(first_refusal)
                .unwrap_or_else(|| Response {
                    code: 451,
                    esc: [4, 4, 2],
                    message: "no reply".into(),
                }));
        }
        self.final_reply().await
    }

    async fn final_reply(&mut self) -> io::Result<Response<String>> {
        self.expect(Phase::Body, "the reply to the message")?;
        let reply = self
            .read(
                self.timeouts.data_dot,
                "waiting for the reply to the message",
            )
            .await?;
        self.phase = Phase::Ready;
        Ok(reply)
    }

    /// `RSET`: ends an open transaction, so the session can carry another.
    pub async fn rset(&mut self) -> io::Result<Response<String>> {
        if !matches!(self.phase, Phase::Ready | Phase::Mail) {
            return Err(self.misuse("RSET"));
        }
        let reply = self
            .command("RSET", self.timeouts.mail_from, "RSET")
            .await?;
        if is_positive(&reply) {
            self.phase = Phase::Ready;
        } else {
            self.phase = Phase::Broken;
        }
        Ok(reply)
    }
}
