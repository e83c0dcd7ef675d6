//! Moving protocol frames over QUIC streams: a frame reader and a frame writer.

use bytes::BytesMut;
use er_protocol::{DecodeError, Frame, decode_frame_bytes, encode_frame};

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

/// Reads whole frames from one QUIC receive stream, never ahead of the current frame: the
/// 4-byte length prefix is read first and checked against the stream's limit before any byte
/// of the body is taken from QUIC, then exactly that many bytes are read. Bytes not yet read stay
/// in QUIC's receive window, whose flow control holds the sender back, so a peer cannot make
/// this reader buffer more than one frame (and never a refused one). Memory grows with the body
/// bytes received, not with the length the peer announced. `next` is cancel-safe: a partial
/// frame stays in the reader.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    max_frame_bytes: u32,
    prefix: [u8; 4],
    prefix_len: usize,
    /// The body of the current frame so far, once its prefix was accepted.
    body: Option<(usize, BytesMut)>,
}

impl FrameReader {
    /// Wraps a stream; frames longer than `max_frame_bytes` (type byte + body) are refused from
    /// their length prefix.
    pub fn new(recv: quinn::RecvStream, max_frame_bytes: u32) -> Self {
        Self {
            recv,
            max_frame_bytes,
            prefix: [0; 4],
            prefix_len: 0,
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

    /// The next frame, or `None` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Frame>, StreamError> {
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
        while body.len() < len {
            match self.recv.read_chunk(len - body.len(), true).await? {
                // The common case: the whole body in one chunk, taken without a copy.
                Some(chunk) if body.is_empty() && chunk.bytes.len() == len => {
                    self.prefix_len = 0;
                    self.body = None;
                    return Ok(Some(decode_frame_bytes(chunk.bytes)?));
                }
                Some(chunk) => body.extend_from_slice(&chunk.bytes),
                None => return Err(StreamError::Truncated(4 + body.len())),
            }
        }
        let body = std::mem::take(body).freeze();
        self.prefix_len = 0;
        self.body = None;
        Ok(Some(decode_frame_bytes(body)?))
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
