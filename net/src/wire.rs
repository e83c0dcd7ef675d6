//! Moving protocol frames over QUIC streams: a frame reader and a frame writer.

use std::sync::Arc;

use bytes::BytesMut;
use er_protocol::{DecodeError, Frame, decode_frame_bytes, encode_frame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why reading frames from a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The QUIC stream failed (connection lost, reset by the peer).
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The QUIC stream could not be written.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The peer sent bytes that are not a valid frame.
    #[error("malformed frame: {0}")]
    Decode(#[from] er_protocol::DecodeError),
    /// The peer finished the stream in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes of it received)")]
    Truncated(usize),
}

/// Largest frame the hub accepts on a site's control stream (hello, pings, group offsets).
/// Batches travel on partition streams under the batch limit; the control stream needs room
/// only for a GroupOffsets frame of the agent's 4096 positions, which with 249-byte topic names
/// (Kafka's maximum) is about 1.1 MB. A site can make the hub hold at most this much for its
/// control stream, instead of a batch's worth.
pub const CONTROL_FRAME_MAX_BYTES: u32 = 2 * 1024 * 1024;

/// Byte budgets that frame readers draw from before they take a frame's body from QUIC: the
/// memory a peer can make us hold in frames read but not yet handed on. Each level (say: the
/// connection, its site, the whole process) is a semaphore of bytes; a frame takes its length
/// from every level, in order, and gives it back when its [`Held`] is dropped. While a level is
/// exhausted the reader waits without reading, so QUIC flow control holds the sender back. A
/// budget with no levels is unlimited.
#[derive(Debug, Clone, Default)]
pub struct InboundBudget {
    levels: Vec<Arc<Semaphore>>,
}

/// Bytes a frame holds of an [`InboundBudget`], returned on drop.
#[derive(Debug, Default)]
#[must_use = "the bytes return to the budget when this is dropped"]
pub struct Held {
    permits: Vec<OwnedSemaphorePermit>,
}

impl Held {
    /// Bytes held (per level).
    pub fn bytes(&self) -> usize {
        self.permits
            .first()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

impl InboundBudget {
    /// No limit.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// This budget with one more level, drawn from after the existing ones.
    pub fn and(mut self, level: Arc<Semaphore>) -> Self {
        self.levels.push(level);
        self
    }

    /// Takes `bytes` from every level, waiting while one lacks them. Cancel-safe: a cancelled
    /// call holds nothing. Levels are always taken in the same order, so readers sharing levels
    /// cannot wait on each other in a cycle; a frame larger than a level's whole size would wait
    /// forever, which the limits' validation rules out.
    pub async fn take(&self, bytes: u32) -> Held {
        let mut permits = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            match level.clone().acquire_many_owned(bytes).await {
                Ok(p) => permits.push(p),
                // A closed level no longer limits anything.
                Err(_) => continue,
            }
        }
        Held { permits }
    }
}

/// Reads whole frames from one QUIC receive stream, never ahead of the current frame: the
/// 4-byte length prefix is read first and checked against the stream's limit, then the frame's
/// length is taken from the reader's [`InboundBudget`], and only then is the body taken from
/// QUIC, exactly that many bytes. Bytes not yet read stay in QUIC's receive window, whose flow
/// control holds the sender back, so a peer cannot make this reader buffer more than one frame
/// (never a refused one, never beyond the budget). `next` is cancel-safe: a partial frame stays
/// in the reader.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    max_frame_bytes: u32,
    budget: InboundBudget,
    prefix: [u8; 4],
    prefix_len: usize,
    /// The current frame's share of the budget, once taken.
    held: Option<Held>,
    /// The body of the current frame so far, once its prefix was accepted.
    body: Option<(usize, BytesMut)>,
}

impl FrameReader {
    /// Wraps a stream; frames longer than `max_frame_bytes` (type byte + body) are refused from
    /// their length prefix.
    pub fn new(recv: quinn::RecvStream, max_frame_bytes: u32) -> Self {
        Self::with_budget(recv, max_frame_bytes, InboundBudget::unlimited())
    }

    /// Like [`FrameReader::new`], holding each frame's bytes of `budget` from before its body
    /// is read until the caller drops the frame's [`Held`] (see [`FrameReader::next_held`]).
    pub fn with_budget(
        recv: quinn::RecvStream,
        max_frame_bytes: u32,
        budget: InboundBudget,
    ) -> Self {
        Self {
            recv,
            max_frame_bytes,
            budget,
            prefix: [0; 4],
            prefix_len: 0,
            held: None,
            body: None,
        }
    }

    /// This stream's frame limit.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// The stream, to read what follows the last frame (after a refused frame, its body is
    /// still unread). Bytes of a frame read partially are lost.
    pub fn into_stream(self) -> quinn::RecvStream {
        self.recv
    }

    /// The next frame, or `None` when the peer finished the stream cleanly. The frame's share
    /// of the budget returns at once: for readers without a budget, or frames consumed on the
    /// spot.
    pub async fn next(&mut self) -> Result<Option<Frame>, StreamError> {
        Ok(self.next_held().await?.map(|(frame, _)| frame))
    }

    /// The next frame with its share of the budget, which returns when the caller drops it.
    pub async fn next_held(&mut self) -> Result<Option<(Frame, Held)>, StreamError> {
        while self.prefix_len < 4 {
            match self.recv.read_chunk(4 - self.prefix_len, true).await? {
                Some(chunk) => {
                    let end = self.prefix_len + chunk.bytes.len();
                    self.prefix[self.prefix_len..end].copy_from_slice(&chunk.bytes);
                    self.prefix_len = end;
                }
                None if self.prefix_len == 0 => return Ok(None),
                None => return Err(StreamError::Truncated(self.prefix_len)),
            }
        }
        let (len, body) = match &mut self.body {
            Some(b) => b,
            None => {
                let len = u32::from_be_bytes(self.prefix);
                if len == 0 {
                    return Err(DecodeError::EmptyFrame.into());
                }
                if len > self.max_frame_bytes {
                    return Err(DecodeError::FrameTooLarge {
                        len,
                        max: self.max_frame_bytes,
                    }
                    .into());
                }
                self.body.insert((len as usize, BytesMut::new()))
            }
        };
        let len = *len;
        if self.held.is_none() {
            // `len` <= max_frame_bytes, a u32.
            self.held = Some(self.budget.take(len as u32).await);
        }
        while body.len() < len {
            match self.recv.read_chunk(len - body.len(), true).await? {
                // The common case: the whole body in one chunk, taken without a copy.
                Some(chunk) if body.is_empty() && chunk.bytes.len() == len => {
                    let held = self.frame_done();
                    return Ok(Some((decode_frame_bytes(chunk.bytes)?, held)));
                }
                Some(chunk) => body.extend_from_slice(&chunk.bytes),
                None => return Err(StreamError::Truncated(4 + body.len())),
            }
        }
        let body = std::mem::take(body).freeze();
        let held = self.frame_done();
        Ok(Some((decode_frame_bytes(body)?, held)))
    }

    /// Resets the reader for the next frame; the finished frame's share of the budget.
    fn frame_done(&mut self) -> Held {
        self.prefix_len = 0;
        self.body = None;
        self.held.take().unwrap_or_default()
    }
}

/// Writes frames to one QUIC send stream, reusing one buffer.
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    buf: BytesMut,
}

impl FrameWriter {
    /// Wraps a stream.
    pub fn new(send: quinn::SendStream) -> Self {
        Self {
            send,
            buf: BytesMut::with_capacity(4096),
        }
    }

    /// Encodes and writes one frame (waits for stream flow-control credit).
    pub async fn write(&mut self, frame: &Frame) -> Result<(), StreamError> {
        self.buf.clear();
        encode_frame(frame, &mut self.buf);
        self.send.write_all(&self.buf).await?;
        Ok(())
    }

    /// Finishes the stream gracefully.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}
