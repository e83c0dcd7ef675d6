//! Fuzzes the frame decoder and batch record decoding with arbitrary bytes.
#![no_main]

use er_protocol::{DEFAULT_MAX_FRAME_BYTES, Frame, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte picks how the input is split into pushes, to exercise partial frames.
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    for piece in rest.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(Frame::Batch(batch))) => {
                    if let Ok(records) = batch.decode_records(1 << 20) {
                        for r in records.iter() {
                            if let Ok(r) = r {
                                for _ in r.headers.iter() {}
                            }
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    // The body alone, as a Batch payload with whatever header fits.
    let _ = er_protocol::decode_frame(rest);
});
