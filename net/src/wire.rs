//! Moving protocol frames over QUIC streams: a frame reader and a frame writer.

use bytes::BytesMut;
use er_protocol::{Frame, FrameDecoder, encode_frame};

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
    #[error("stream ended inside a frame ({0} bytes buffered)")]
    Truncated(usize),
}

/// Reads whole frames from one QUIC receive stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// Wraps a stream; frames longer than `max_frame_bytes` are refused.
    pub fn new(recv: quinn::RecvStream, max_frame_bytes: u32) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(max_frame_bytes),
        }
    }

    /// The next frame, or `None` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Frame>, StreamError> {
        loop {
            if let Some(f) = self.decoder.next_frame()? {
                return Ok(Some(f));
            }
            match self.recv.read_chunk(1 << 20, true).await? {
                Some(chunk) => self.decoder.push(&chunk.bytes),
                None if self.decoder.buffered_len() == 0 => return Ok(None),
                None => return Err(StreamError::Truncated(self.decoder.buffered_len())),
            }
        }
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
