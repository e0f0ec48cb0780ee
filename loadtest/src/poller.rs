//! The HTTP side of `overhead`: one device asking for its place once per
//! interval with `GET /api/v1/rooms/{room}/status?device_id=…` over one
//! keep-alive connection, as a page polling with `fetch()` would.
//!
//! A small HTTP/1.1 client of its own rather than the pooled hyper client:
//! the request bytes are exactly the ones chosen here (browser-like headers,
//! see [`PollHeaders`]), and every byte both ways is counted at the socket
//! ([`Counted`]). Responses are read by `Content-Length` or chunked
//! encoding; a connection the server closes is reopened on the next poll
//! (and a request that meets a keep-alive connection closed under it is
//! retried once on a fresh one, as browsers do).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::counting::{ByteCounts, Counted};
use crate::device::io_reason;

/// Largest response head (status line + headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 256 * 1024;

/// Which request headers a poll sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollHeaders {
    /// What Chrome 124 on Linux sends for a same-origin `fetch()` without
    /// cookies: `Host`, `Connection`, the three `sec-ch-ua*` client hints,
    /// `User-Agent`, `Accept: */*`, the three `Sec-Fetch-*` headers,
    /// `Referer`, `Accept-Encoding` and `Accept-Language`. A real site
    /// usually adds cookies on top, so this is a floor for a browser.
    Browser,
    /// `Host` only (HTTP/1.1 keeps the connection alive by default): the
    /// least any HTTP client can send.
    Minimal,
}

impl PollHeaders {
    /// The wire name (`browser`, `minimal`).
    pub fn as_str(self) -> &'static str {
        match self {
            PollHeaders::Browser => "browser",
            PollHeaders::Minimal => "minimal",
        }
    }
}

/// The complete request bytes of one status poll.
pub fn status_request(host: &str, path: &str, headers: PollHeaders) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    if headers == PollHeaders::Browser {
        r.push_str(concat!(
            "Connection: keep-alive\r\n",
            "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n",
            "sec-ch-ua-mobile: ?0\r\n",
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) ",
            "Chrome/124.0.0.0 Safari/537.36\r\n",
            "sec-ch-ua-platform: \"Linux\"\r\n",
            "Accept: */*\r\n",
            "Sec-Fetch-Site: same-origin\r\n",
            "Sec-Fetch-Mode: cors\r\n",
            "Sec-Fetch-Dest: empty\r\n",
        ));
        r.push_str(&format!("Referer: http://{host}/waiting-room\r\n"));
        r.push_str("Accept-Encoding: gzip, deflate, br, zstd\r\n");
        r.push_str("Accept-Language: en-US,en;q=0.9\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One answered poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollReply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

type Conn = BufReader<Counted<TcpStream>>;

/// One device's poller: its request and its keep-alive connection.
#[derive(Debug)]
pub struct Poller {
    addr: SocketAddr,
    source: Option<IpAddr>,
    request: Vec<u8>,
    counts: Arc<ByteCounts>,
    conn: Option<Conn>,
    /// TCP connections opened so far.
    pub connects: u64,
}

impl Poller {
    /// A poller sending `request` to `addr` from `source`, counting into
    /// `counts`. Connects on the first poll.
    pub fn new(
        addr: SocketAddr,
        source: Option<IpAddr>,
        request: Vec<u8>,
        counts: Arc<ByteCounts>,
    ) -> Poller {
        Poller {
            addr,
            source,
            request,
            counts,
            conn: None,
            connects: 0,
        }
    }

    /// One request and its response, within `timeout`. On any error the
    /// connection is dropped (the next poll opens a new one); the error is
    /// a short reason (`timeout`, `connect_connection_refused`, `eof`, …).
    pub async fn poll(&mut self, timeout: Duration) -> Result<PollReply, String> {
        let outcome = tokio::time::timeout(timeout, self.exchange_retrying()).await;
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err("timeout".to_owned())
            }
        }
    }

    async fn exchange_retrying(&mut self) -> Result<PollReply, String> {
        let reused = self.conn.is_some();
        match self.exchange().await {
            // The server closed the idle connection as the request went
            // out: once more on a new connection.
            Err(Failure::ClosedBeforeAnswer) if reused => {
                self.conn = None;
                self.exchange().await.map_err(Failure::reason)
            }
            other => other.map_err(Failure::reason),
        }
    }

    async fn connect(&mut self) -> Result<Conn, String> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| io_reason("socket", &e))?;
        if let Some(ip) = self.source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| io_reason("bind", &e))?;
        }
        let stream = socket
            .connect(self.addr)
            .await
            .map_err(|e| io_reason("connect", &e))?;
        let _ = stream.set_nodelay(true);
        self.connects += 1;
        Ok(BufReader::with_capacity(
            4096,
            Counted::new(stream, self.counts.clone()),
        ))
    }

    async fn exchange(&mut self) -> Result<PollReply, Failure> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await.map_err(Failure::Other)?,
        };
        conn.get_mut()
            .write_all(&self.request)
            .await
            .map_err(|_| Failure::ClosedBeforeAnswer)?;
        let (reply, keep) = read_response(&mut conn).await?;
        if keep {
            self.conn = Some(conn);
        }
        Ok(reply)
    }
}

/// Why an exchange failed.
#[derive(Debug)]
enum Failure {
    /// Nothing came back: the connection was closed under the request.
    ClosedBeforeAnswer,
    /// Anything else, as a reason.
    Other(String),
}

impl Failure {
    fn reason(self) -> String {
        match self {
            Failure::ClosedBeforeAnswer => "eof".to_owned(),
            Failure::Other(r) => r,
        }
    }
}

fn other(r: &str) -> Failure {
    Failure::Other(r.to_owned())
}

/// Reads one response; returns it and whether the connection stays open.
async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(
    conn: &mut R,
) -> Result<(PollReply, bool), Failure> {
    let mut line = String::new();
    let n = conn
        .read_line(&mut line)
        .await
        .map_err(|_| Failure::ClosedBeforeAnswer)?;
    if n == 0 {
        return Err(Failure::ClosedBeforeAnswer);
    }
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(other("bad_status_line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| other("bad_status_line"))?;
    let mut keep = version == "HTTP/1.1";
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut head = n;
    loop {
        line.clear();
        let n = conn
            .read_line(&mut line)
            .await
            .map_err(|e| Failure::Other(io_reason("io", &e)))?;
        head += n;
        if n == 0 {
            return Err(other("eof_in_headers"));
        }
        if head > MAX_HEAD {
            return Err(other("headers_too_large"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(other("bad_header"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| other("bad_content_length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep = false;
            } else if v.contains("keep-alive") {
                keep = true;
            }
        }
    }
    let body = if chunked {
        read_chunked(conn).await?
    } else if let Some(len) = length {
        if len > MAX_BODY {
            return Err(other("body_too_large"));
        }
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body)
            .await
            .map_err(|_| other("eof_in_body"))?;
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        // Delimited by the close: read to the end (bounded).
        keep = false;
        let mut body = Vec::new();
        conn.take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|e| Failure::Other(io_reason("io", &e)))?;
        if body.len() > MAX_BODY {
            return Err(other("body_too_large"));
        }
        body
    };
    Ok((PollReply { status, body }, keep))
}

async fn read_chunked<R: tokio::io::AsyncBufRead + Unpin>(
    conn: &mut R,
) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if conn
            .read_line(&mut line)
            .await
            .map_err(|_| other("eof_in_body"))?
            == 0
        {
            return Err(other("eof_in_body"));
        }
        let size_text = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text.trim(), 16).map_err(|_| other("bad_chunk"))?;
        if body.len() + size > MAX_BODY {
            return Err(other("body_too_large"));
        }
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                let n = conn
                    .read_line(&mut line)
                    .await
                    .map_err(|_| other("eof_in_body"))?;
                if n == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size + 2, 0);
        conn.read_exact(&mut body[start..])
            .await
            .map_err(|_| other("eof_in_body"))?;
        body.truncate(start + size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_request_is_complete_and_minimal_is_small() {
        let b = status_request(
            "127.0.0.1:8000",
            "/api/v1/rooms/r/status?device_id=d",
            PollHeaders::Browser,
        );
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(text.starts_with(
            "GET /api/v1/rooms/r/status?device_id=d HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
        ));
        assert!(text.ends_with("\r\n\r\n"));
        for h in [
            "User-Agent: Mozilla/5.0",
            "Sec-Fetch-Mode: cors",
            "Referer: http://127.0.0.1:8000/waiting-room",
            "Accept-Language:",
        ] {
            assert!(text.contains(h), "{h} missing in {text}");
        }
        assert!(b.len() > 500, "{}", b.len());
        let m = status_request("h:1", "/p", PollHeaders::Minimal);
        assert_eq!(m, b"GET /p HTTP/1.1\r\nHost: h:1\r\n\r\n");
    }

    async fn parse(raw: &[u8]) -> Result<(PollReply, bool), Failure> {
        let mut r = BufReader::new(raw);
        read_response(&mut r).await
    }

    #[tokio::test]
    async fn reads_content_length_chunked_and_close() {
        let (r, keep) = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), keep),
            (200, &b"hello"[..], true)
        );
        let (r, keep) = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!((r.body.as_slice(), keep), (&b"abcde"[..], true));
        let (r, keep) =
            parse(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        assert_eq!((r.status, keep), (404, false));
        let (r, keep) = parse(b"HTTP/1.0 200 OK\r\n\r\nall of it").await.unwrap();
        assert_eq!((r.body.as_slice(), keep), (&b"all of it"[..], false));
    }

    #[tokio::test]
    async fn refuses_junk() {
        assert!(matches!(parse(b"").await, Err(Failure::ClosedBeforeAnswer)));
        assert!(parse(b"SSH-2.0\r\n\r\n").await.is_err());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
                .await
                .is_err()
        );
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .await
                .is_err()
        );
    }
}
