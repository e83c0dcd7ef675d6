//! Fuzzes the frame decoder and batch record decoding with arbitrary bytes.
#![no_main]

use er_protocol::{
    Batch, BatchHeader, Codec, DEFAULT_MAX_FRAME_BYTES, Frame, FrameDecoder, TopicPartition,
};
use libfuzzer_sys::fuzz_target;

fn walk(batch: &Batch) {
    if let Ok(records) = batch.decode_records(1 << 20) {
        for r in records.iter().flatten() {
            for _ in r.headers.iter() {}
        }
    }
}

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
                Ok(Some(Frame::Batch(batch))) => walk(&batch),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = er_protocol::decode_frame(rest);

    // The same bytes as a record payload, so record decoding is reached without a valid header.
    let codec = if chunk & 1 == 0 { Codec::None } else { Codec::Zstd };
    let uncompressed_len = match codec {
        Codec::None => rest.len() as u32,
        Codec::Zstd => u32::from(chunk as u8) * 64,
    };
    walk(&Batch {
        header: BatchHeader {
            seq: 0,
            tp: TopicPartition::new("t", 0),
            partition_count: 1,
            first_offset: 100,
            next_offset: 100 + i64::from(chunk as u8),
            record_count: u32::from(chunk as u8 >> 2),
            codec,
            uncompressed_len,
        },
        payload: bytes::Bytes::copy_from_slice(rest),
    });
});
