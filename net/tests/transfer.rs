//! A 64 MiB transfer on one bidirectional stream: the tuned windows carry it end to end.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use er_net::devcerts::{self, DevPki};
use er_net::{TransportTuning, client_endpoint, peer_site_alias, server_endpoint};

const TOTAL: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

/// Deterministic, position-dependent bytes so reordering or loss changes the checksum.
fn fill(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = offset + i as u64;
        *b = (x ^ (x >> 8) ^ (x >> 16)) as u8;
    }
}

fn checksum(acc: u64, buf: &[u8]) -> u64 {
    buf.iter().fold(acc, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_on_one_bidi_stream() -> Result<()> {
    let dir = tempfile::tempdir()?;
    devcerts::generate(dir.path(), &[], &["shop-1".into()], false)?;
    let pki = DevPki::new(dir.path());
    let tuning = TransportTuning::default();
    let server = server_endpoint("127.0.0.1:0".parse()?, &pki.hub_tls(), &tuning)?;
    let addr = server.local_addr()?;

    let hub = tokio::spawn(async move {
        let conn = server.accept().await.context("endpoint closed")?.await?;
        ensure!(peer_site_alias(&conn)? == "shop-1");
        let (mut send, mut recv) = conn.accept_bi().await?;
        let (mut n, mut sum) = (0u64, 0xcbf2_9ce4_8422_2325u64);
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            sum = checksum(sum, &chunk.bytes);
            n += chunk.bytes.len() as u64;
        }
        send.write_all(&n.to_be_bytes()).await?;
        send.write_all(&sum.to_be_bytes()).await?;
        send.finish()?;
        // Keep the connection until the client has read the reply.
        conn.closed().await;
        Ok::<_, anyhow::Error>((n, sum))
    });

    let (client, _) = client_endpoint("127.0.0.1:0".parse()?, &pki.site_tls("shop-1"), &tuning)?;
    let conn = client.connect(addr, "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let started = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let (mut sent, mut sum) = (0u64, 0xcbf2_9ce4_8422_2325u64);
    while sent < TOTAL {
        fill(&mut buf, sent);
        sum = checksum(sum, &buf);
        send.write_all(&buf).await?;
        sent += CHUNK as u64;
    }
    send.finish()?;
    let reply = tokio::time::timeout(Duration::from_secs(120), recv.read_to_end(16)).await??;
    let elapsed = started.elapsed();
    conn.close(0u32.into(), b"done");
    let (n, hub_sum) = hub.await??;
    println!(
        "64 MiB in {elapsed:?} ({:.0} Mbit/s)",
        TOTAL as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
    assert_eq!(n, TOTAL);
    assert_eq!(hub_sum, sum, "bytes differ");
    assert_eq!(reply[..8], TOTAL.to_be_bytes());
    assert_eq!(reply[8..], sum.to_be_bytes());
    client.wait_idle().await;
    Ok(())
}
