//! FrameReader over real QUIC streams: the length prefix is checked before any body byte is
//! taken from QUIC, frames are read exactly (never into the next one), and a stream that ends
//! inside a frame is reported.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::BytesMut;
use er_net::devcerts;
use er_net::wire::{FrameReader, StreamError};
use er_net::{TransportTuning, client_endpoint, server_endpoint};
use er_protocol::{DecodeError, Frame, encode_frame};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A connected pair; returns the client's send half and the hub's receive half of one stream
/// (opened by writing `first`, which the stream then starts with).
async fn stream_pair(
    first: &[u8],
) -> Result<(
    quinn::SendStream,
    quinn::RecvStream,
    (quinn::Endpoint, quinn::Endpoint, tempfile::TempDir),
)> {
    let dir = tempfile::tempdir()?;
    devcerts::generate(dir.path(), &[], &["shop-1".into()], false)?;
    let pki = devcerts::DevPki::new(dir.path());
    let server = server_endpoint(loopback(), &pki.hub_tls(), &TransportTuning::default())?;
    let addr = server.local_addr()?;
    let (client, config) = client_endpoint(
        loopback(),
        &pki.site_tls("shop-1"),
        &TransportTuning::default(),
    )?;
    let accept = {
        let server = server.clone();
        tokio::spawn(async move {
            let conn = server.accept().await.context("endpoint closed")?.await?;
            let recv = conn.accept_uni().await?;
            anyhow::Ok((conn, recv))
        })
    };
    let conn = client.connect_with(config, addr, "localhost")?.await?;
    let mut send = conn.open_uni().await?;
    send.write_all(first).await?;
    let (hub_conn, recv) = accept.await??;
    // Keep both connections alive with their endpoints.
    std::mem::forget((conn, hub_conn));
    Ok((send, recv, (server, client, dir)))
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(frame, &mut buf);
    buf.to_vec()
}

fn ping(nonce: u64) -> Frame {
    Frame::Ping {
        nonce,
        sent_at_micros: 0,
    }
}

#[tokio::test]
async fn an_oversized_length_is_refused_before_any_body_byte_is_read() -> Result<()> {
    // A 1 MiB frame announced to a reader allowing 1 KiB; the body follows at once.
    let mut bytes = (1u32 << 20).to_be_bytes().to_vec();
    bytes.extend([0xAB; 4096]);
    let (_send, recv, _keep) = stream_pair(&bytes).await?;
    let mut reader = FrameReader::new(recv, 1024);
    match reader.next().await {
        Err(StreamError::Decode(DecodeError::FrameTooLarge { len, max })) => {
            assert_eq!((len, max), (1 << 20, 1024));
        }
        other => panic!("oversized frame not refused: {other:?}"),
    }
    // Nothing of the body was taken from the stream: it is still there, byte for byte.
    let mut recv = reader.into_stream();
    let mut rest = [0u8; 4096];
    recv.read_exact(&mut rest).await?;
    assert!(rest.iter().all(|&b| b == 0xAB));
    Ok(())
}

#[tokio::test]
async fn frames_are_read_exactly_never_into_the_next_one() -> Result<()> {
    let first = encoded(&ping(7));
    let second = encoded(&ping(8));
    let limit = u32::try_from(first.len() - 4)?;
    let mut both = first.clone();
    both.extend(&second);
    let (mut send, recv, _keep) = stream_pair(&both).await?;
    send.finish()?;
    // A frame exactly at the limit is accepted.
    let mut reader = FrameReader::new(recv, limit);
    assert_eq!(reader.next().await?, Some(ping(7)));
    // The second frame is still in the stream, whole.
    let rest = reader.into_stream().read_to_end(1024).await?;
    assert_eq!(rest, second);
    Ok(())
}

#[tokio::test]
async fn a_large_frame_arriving_in_pieces_decodes_and_a_clean_end_is_none() -> Result<()> {
    let big = Frame::GoAway {
        reason: "x".repeat(60_000),
    };
    let bytes = encoded(&big);
    let (mut send, recv, _keep) = stream_pair(&bytes[..10]).await?;
    let mut reader = FrameReader::new(recv, 1 << 20);
    let writer = tokio::spawn(async move {
        for piece in bytes[10..].chunks(1000) {
            send.write_all(piece).await?;
            tokio::task::yield_now().await;
        }
        send.write_all(&encoded(&ping(1))).await?;
        send.finish()?;
        anyhow::Ok(())
    });
    assert_eq!(reader.next().await?, Some(big));
    assert_eq!(reader.next().await?, Some(ping(1)));
    assert_eq!(reader.next().await?, None);
    writer.await??;
    Ok(())
}

#[tokio::test]
async fn a_stream_ending_inside_a_frame_is_truncated() -> Result<()> {
    let frame = encoded(&ping(3));
    for cut in [2, 4, frame.len() - 1] {
        let (mut send, recv, _keep) = stream_pair(&frame[..cut]).await?;
        send.finish()?;
        let mut reader = FrameReader::new(recv, 1024);
        match reader.next().await {
            Err(StreamError::Truncated(n)) => assert_eq!(n, cut, "cut at {cut}"),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    let (_send, recv, _keep) = stream_pair(&0u32.to_be_bytes()).await?;
    assert!(matches!(
        FrameReader::new(recv, 1024).next().await,
        Err(StreamError::Decode(DecodeError::EmptyFrame))
    ));
    Ok(())
}
