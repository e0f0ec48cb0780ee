//! Measures what a ping flood from devices that never read costs a node:
//! its resident memory (now and peak, `VmRSS`/`VmHWM` of `--pid`) before,
//! at the end of and after the flood, how many bytes each flooding
//! connection got in before the node cut it off, and a reading device's
//! round-trip time (`ping` frame → `pong`) idle and during the flood.
//!
//! ```text
//! cargo run --release -p pace-loadtest --example ping_flood -- \
//!     127.0.0.1:PORT NODE_PID [CONNECTIONS] [MIB_PER_CONNECTION]
//! ```
//!
//! The node must accept devices without a token
//! (`--insecure-anonymous-devices`). Loopback only; every flood is bounded
//! by its byte budget and 90 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// `VmRSS` and `VmHWM` of `pid`, in MiB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow!("no {name}"))?;
        let kib: f64 = line[name.len()..]
            .split_whitespace()
            .next()
            .ok_or_else(|| anyhow!("empty {name}"))?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Opens `/ws` as `device` by hand over a socket with a small receive
/// buffer, and returns it after the 101, unread from then on.
async fn raw_upgrade(node: SocketAddr, device: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut tcp = socket.connect(node).await?;
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {node}\r\nx-device-id: {device}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if tcp.read(&mut byte).await? == 0 {
            return Err(anyhow!("closed in the handshake"));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(anyhow!("{}", String::from_utf8_lossy(&head)));
    }
    Ok(tcp)
}

/// Floods `tcp` with masked 125-byte pings until the node cuts it off or
/// `budget` bytes went out; returns (bytes sent, cut off, how long).
async fn flood(mut tcp: tokio::net::TcpStream, budget: usize) -> (usize, bool, Duration) {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x89, 0x80 | 125];
    frame.extend_from_slice(&mask);
    frame.extend((0..125).map(|i| b'p' ^ mask[i % 4]));
    let chunk = frame.repeat(1024);
    let started = Instant::now();
    let mut sent = 0;
    while sent < budget && started.elapsed() < Duration::from_secs(90) {
        match tokio::time::timeout(Duration::from_secs(30), tcp.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => return (sent, true, started.elapsed()),
            Err(_) => return (sent, false, started.elapsed()),
        }
    }
    (sent, false, started.elapsed())
}

/// Round trips of `n` `ping` frames on a reading device, 10 ms apart.
async fn round_trips<S>(ws: &mut S, n: u64) -> anyhow::Result<Vec<Duration>>
where
    S: SinkExt<Message>
        + StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
    <S as futures_util::Sink<Message>>::Error: std::error::Error + Send + Sync + 'static,
{
    let mut rtts = Vec::new();
    for id in 0..n {
        let t = Instant::now();
        ws.send(Message::Text(
            format!(r#"{{"type":"ping","id":{id}}}"#).into(),
        ))
        .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""type":"pong""#) => break,
                Ok(Some(Ok(_))) => continue,
                other => return Err(anyhow!("no pong: {other:?}")),
            }
        }
        rtts.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rtts.sort();
    Ok(rtts)
}

fn summary(rtts: &[Duration]) -> String {
    let at = |q: f64| rtts[((rtts.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let node: SocketAddr = args
        .first()
        .context("usage: ping_flood ADDR PID [CONNECTIONS] [MIB_PER_CONNECTION]")?
        .parse()?;
    let pid: u32 = args.get(1).context("PID")?.parse()?;
    let conns: usize = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let mib: usize = args.get(3).map_or(Ok(300), |s| s.parse())?;

    let (rss0, hwm0) = memory(pid)?;
    println!("before: RSS {rss0:.1} MiB (peak so far {hwm0:.1} MiB)");
    let (mut bystander, _) =
        tokio_tungstenite::connect_async(format!("ws://{node}/ws?device_id=bystander")).await?;
    let idle = round_trips(&mut bystander, 200).await?;
    println!("bystander idle: {}", summary(&idle));

    let mut floods = Vec::new();
    for i in 0..conns {
        let tcp = raw_upgrade(node, &format!("flooder-{i}")).await?;
        floods.push(tokio::spawn(flood(tcp, mib << 20)));
    }
    let during = round_trips(&mut bystander, 200).await?;
    let started = Instant::now();
    let mut sent = Vec::new();
    let mut cut_off = 0;
    let mut longest = Duration::ZERO;
    for f in floods {
        let (bytes, cut, took) = f.await?;
        sent.push(bytes);
        cut_off += usize::from(cut);
        longest = longest.max(took);
    }
    let flood_time = started.elapsed();
    let (rss1, hwm1) = memory(pid)?;
    println!("bystander during the flood: {}", summary(&during));
    let total: usize = sent.iter().sum();
    println!(
        "{conns} flooding connections: {cut_off} cut off; {:.1} MiB of pings sent in all \
         (max {:.1} MiB on one); the longest lasted {:.2} s; done {:.1} s after the bystander's samples",
        total as f64 / 1048576.0,
        sent.iter().max().copied().unwrap_or(0) as f64 / 1048576.0,
        longest.as_secs_f64(),
        flood_time.as_secs_f64()
    );
    println!(
        "end of flood: RSS {rss1:.1} MiB, peak {hwm1:.1} MiB: peak growth {:.1} MiB = {:.0} KiB per flooding connection",
        hwm1 - rss0,
        (hwm1 - rss0) * 1024.0 / conns as f64
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss2, _) = memory(pid)?;
    println!("2 s after: RSS {rss2:.1} MiB");
    let after = round_trips(&mut bystander, 100).await?;
    println!("bystander after: {}", summary(&after));
    Ok(())
}
