//! The byte stream under the WebSocket and the status API: TCP, and TLS on
//! top of it for `https`/`wss` endpoints when built with the `tls` feature.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::endpoint::Endpoint;

/// A connected stream to an endpoint.
#[derive(Debug)]
pub(crate) enum Transport {
    /// Plain TCP (`http`, `ws`).
    Plain(TcpStream),
    /// TLS over TCP (`https`, `wss`).
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    /// Opens TCP (and TLS) to `ep`. The caller bounds it with a timeout.
    pub(crate) async fn connect(ep: &Endpoint) -> io::Result<Transport> {
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port)).await?;
        // Small frames, latency matters more than packet count.
        tcp.set_nodelay(true)?;
        if !ep.tls {
            return Ok(Transport::Plain(tcp));
        }
        tls(ep, tcp).await
    }
}

#[cfg(feature = "tls")]
async fn tls(ep: &Endpoint, tcp: TcpStream) -> io::Result<Transport> {
    use std::sync::Arc;
    // Built per connection (only on reconnects, so cheap enough) rather
    // than cached, so a failure is an error here and never a silently
    // weaker configuration.
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(Transport::Tls(Box::new(stream)))
}

#[cfg(not(feature = "tls"))]
async fn tls(ep: &Endpoint, _tcp: TcpStream) -> io::Result<Transport> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{ep} needs TLS: build pace-device with the `tls` feature"),
    ))
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
