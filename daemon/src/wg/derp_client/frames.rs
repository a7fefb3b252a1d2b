//! Reading DERP frames (and the HTTP upgrade response before them) from
//! a byte stream, with one buffer that grows only while the link is busy.

use tailnet_wire::derp::{self, Frame};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::DerpClientError;

const HTTP_HEAD_LIMIT: usize = 8 << 10;
// Buffers start small and grow to the largest frame seen: idle links stay cheap.
pub(super) const INITIAL_READ_BUF: usize = 4 << 10;
const BUSY_READ_BUF: usize = 64 << 10;

/// Reads DERP frames from a stream, reusing one growable buffer.
pub struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of the last returned frame, released on the next read.
    consumed: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: vec![0; INITIAL_READ_BUF],
            start: 0,
            end: 0,
            consumed: 0,
        }
    }

    async fn fill(&mut self, need_total: usize) -> Result<(), DerpClientError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if need_total > self.buf.len() {
            self.buf.resize(need_total, 0);
        }
        let space = self.buf.len() - self.end;
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(DerpClientError::Closed);
        }
        self.end += n;
        // A read that filled every free byte means a busy link: read more per call.
        if n == space && self.buf.len() < BUSY_READ_BUF {
            let grown = (self.buf.len() * 2).min(BUSY_READ_BUF);
            self.buf.resize(grown, 0);
        }
        Ok(())
    }

    /// Read the HTTP response head; bytes after it stay buffered for frames.
    /// Returns the status line.
    pub async fn read_http_head(&mut self) -> Result<String, DerpClientError> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(pos) = avail.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&avail[..pos])
                    .map_err(|_| DerpClientError::BadHttpResponse)?;
                let status = head.lines().next().unwrap_or_default().to_owned();
                self.start += pos + 4;
                return Ok(status);
            }
            if avail.len() >= HTTP_HEAD_LIMIT {
                return Err(DerpClientError::BadHttpResponse);
            }
            let want = self.end - self.start + 1024;
            self.fill(want.min(HTTP_HEAD_LIMIT)).await?;
        }
    }

    /// Read the next frame. Cancel-safe only between frames is not needed:
    /// the link drives it from one task.
    pub async fn next_frame(&mut self) -> Result<Frame<'_>, DerpClientError> {
        self.start += std::mem::take(&mut self.consumed);
        loop {
            let avail = &self.buf[self.start..self.end];
            match derp::frame_len(avail) {
                Some(total) if total > derp::MAX_FRAME_SIZE + derp::FRAME_HEADER_LEN => {
                    return Err(derp::DerpError::FrameTooLarge {
                        len: total,
                        max: derp::MAX_FRAME_SIZE,
                    }
                    .into());
                }
                Some(total) if avail.len() >= total => break,
                Some(total) => self.fill(total).await?,
                None => self.fill(derp::FRAME_HEADER_LEN).await?,
            }
        }
        let (frame, used) =
            derp::decode_frame(&self.buf[self.start..self.end])?.ok_or(DerpClientError::Closed)?;
        self.consumed = used;
        Ok(frame)
    }
}
