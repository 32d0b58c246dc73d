//! Outbound HTTP connections, kept and reused as Spin keeps them: one hyper-util client
//! for the whole app, whose idle connections any later request (of any instance) to the
//! same scheme and authority may take. `[outbound_http] connection_pooling = false` in
//! the runtime config makes every request open its own connection, as on Spin.
//!
//! The guest's request options apply per request, as in Spin's `factor-outbound-http`:
//! the connect timeout to any connection the request has to open (through a task-local,
//! since the client's connector is shared), the first-byte timeout to the response head,
//! and the between-bytes timeout to each frame of its body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::capabilities::allowed_hosts::default_port;

/// What `wasmtime-wasi-http`'s own sender waits when the guest sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

tokio::task_local! {
    /// The connect timeout of the request being sent.
    static CONNECT_TIMEOUT: Duration;
}

/// The app's outbound HTTP client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, WasiBody>,
}

impl HttpClient {
    pub fn new(connection_pooling: bool) -> HttpClient {
        let mut builder = Client::builder(TokioExecutor::new());
        if !connection_pooling {
            builder.pool_max_idle_per_host(0);
        }
        HttpClient {
            client: builder.build(Connector::new()),
        }
    }

    /// Sends `request` (absolute URI), on an idle connection to its origin if there is
    /// one. The connection's I/O runs in the client's own task, so the returned future,
    /// which `wasmtime-wasi-http` awaits for the outcome of that I/O, has nothing to do.
    pub async fn send(
        &self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let option = |pick: fn(&RequestOptions) -> Option<Duration>| {
            options.as_ref().and_then(pick).unwrap_or(DEFAULT_TIMEOUT)
        };
        let connect_timeout = option(|o| o.connect_timeout);
        let first_byte_timeout = option(|o| o.first_byte_timeout);
        let between_bytes_timeout = option(|o| o.between_bytes_timeout).max(Duration::new(0, 1));
        if request.uri().authority().is_none() {
            return Err(Error::HttpRequestUriInvalid);
        }
        // The client writes `Host` from the URI; one from the guest could disagree (Spin
        // drops it too).
        request.headers_mut().remove(http::header::HOST);
        let response = CONNECT_TIMEOUT.scope(connect_timeout, self.client.request(request));
        let response = tokio::time::timeout(first_byte_timeout, response)
            .await
            .map_err(|_| Error::ConnectionReadTimeout)?
            .map_err(request_error)?;
        Ok(response.map(|incoming| {
            use http_body_util::BodyExt;
            BetweenBytesTimeout {
                incoming,
                timeout: between_bytes_timeout,
                sleep: Box::pin(tokio::time::sleep(between_bytes_timeout)),
            }
            .boxed_unsync()
        }))
    }
}

/// The guest's error code for a failed request: the connector's own error where it
/// failed to connect, else what hyper says of the exchange.
fn request_error(error: hyper_util::client::legacy::Error) -> Error {
    let mut cause = std::error::Error::source(&error);
    while let Some(e) = cause {
        if let Some(connect) = e.downcast_ref::<ConnectError>() {
            return connect.to_wasi();
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            return hyper_error(hyper);
        }
        cause = e.source();
    }
    if error.is_connect() {
        Error::ConnectionRefused
    } else {
        Error::HttpProtocolError
    }
}

fn hyper_error(error: &hyper::Error) -> Error {
    if error.is_timeout() {
        Error::HttpResponseTimeout
    } else if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        Error::HttpResponseIncomplete
    } else {
        Error::HttpProtocolError
    }
}

/// Why no connection could be made (kept apart from hyper's errors, so the guest gets
/// the precise code).
#[derive(Debug)]
enum ConnectError {
    Timeout,
    Refused(String),
    Dns(String),
    InvalidName,
    Tls(String),
}

impl ConnectError {
    fn to_wasi(&self) -> Error {
        match self {
            ConnectError::Timeout => Error::ConnectionTimeout,
            ConnectError::Refused(_) => Error::ConnectionRefused,
            ConnectError::Dns(e) => Error::DnsError {
                rcode: Some(e.clone()),
                info_code: None,
            },
            ConnectError::InvalidName => Error::HttpRequestUriInvalid,
            ConnectError::Tls(_) => Error::TlsProtocolError,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => write!(f, "connect timed out"),
            ConnectError::Refused(e) => write!(f, "connect failed: {e}"),
            ConnectError::Dns(e) => write!(f, "host name lookup failed: {e}"),
            ConnectError::InvalidName => write!(f, "no host to connect to"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Opens TCP connections, with TLS (web PKI roots, as `wasmtime-wasi-http` has) for
/// `https`.
#[derive(Clone)]
struct Connector {
    tls: tokio_rustls::TlsConnector,
}

impl Connector {
    fn new() -> Connector {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Connector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn connect(self, uri: Uri, timeout: Duration) -> Result<TokioIo<Stream>, ConnectError> {
        let host = uri.host().ok_or(ConnectError::InvalidName)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = uri.scheme() == Some(&Scheme::HTTPS);
        let port = uri
            .port_u16()
            .or_else(|| default_port(uri.scheme_str().unwrap_or_default()))
            .ok_or(ConnectError::InvalidName)?;
        let connect = async {
            let addresses: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| ConnectError::Dns(e.to_string()))?
                .collect();
            TcpStream::connect(&*addresses)
                .await
                .map_err(|e| ConnectError::Refused(e.to_string()))
        };
        let tcp = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout)??;
        if !tls {
            return Ok(TokioIo::new(Stream::Plain(tcp)));
        }
        let name =
            rustls::pki_types::ServerName::try_from(host).map_err(|_| ConnectError::InvalidName)?;
        let handshake = self.tls.connect(name, tcp);
        let tls = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        Ok(TokioIo::new(Stream::Tls(Box::new(tls))))
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Read now, while the request's scope is current: the client may finish the
        // connect in a task of its own.
        let timeout = CONNECT_TIMEOUT
            .try_with(|timeout| *timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        Box::pin(self.clone().connect(uri, timeout))
    }
}

/// A connection, plain or over TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(tcp) => tcp.connected(),
            Stream::Tls(tls) => tls.get_ref().0.connected(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A response body that fails when the server is silent for longer than the guest's
/// between-bytes timeout.
struct BetweenBytesTimeout {
    incoming: hyper::body::Incoming,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for BetweenBytesTimeout {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(hyper_error(&e)))),
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(this.sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.incoming)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.incoming)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full};
    use hyper::service::service_fn;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    fn get(url: &str) -> http::Request<WasiBody> {
        http::Request::get(url)
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap()
    }

    fn timeouts(connect: u64, first_byte: u64, between_bytes: u64) -> Option<RequestOptions> {
        Some(RequestOptions {
            connect_timeout: Some(Duration::from_millis(connect)),
            first_byte_timeout: Some(Duration::from_millis(first_byte)),
            between_bytes_timeout: Some(Duration::from_millis(between_bytes)),
        })
    }

    /// An HTTP/1.1 server answering `ok`, and how many connections it accepted.
    async fn counting_server() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let answer = service_fn(|_| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), answer)
                        .await;
                });
            }
        });
        (url, accepted)
    }

    async fn body(response: http::Response<WasiBody>) -> Result<Bytes, Error> {
        Ok(response.into_body().collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn idle_connections_are_reused_unless_pooling_is_off() {
        for (pooling, connections) in [(true, 1), (false, 3)] {
            let (url, accepted) = counting_server().await;
            let client = HttpClient::new(pooling);
            for _ in 0..3 {
                let response = client.send(get(&url), None).await.unwrap();
                assert_eq!(response.status(), 200);
                assert_eq!(body(response).await.unwrap(), "ok");
                // The client puts a finished connection back in its pool from a task of
                // its own: let that run, as it has long run between two real requests.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                connections,
                "pooling {pooling}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_without_a_host_is_an_invalid_uri() {
        let error = HttpClient::new(true)
            .send(get("/relative"), None)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::HttpRequestUriInvalid), "{error:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_connection_refused() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let error = HttpClient::new(true)
            .send(get(&url), None)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::ConnectionRefused), "{error:?}");
    }

    /// A server that reads one request, writes `reply` (perhaps nothing, perhaps part of
    /// an answer) and then stays silent.
    async fn silent_after(reply: &'static [u8]) -> String {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(reply).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        url
    }

    #[tokio::test]
    async fn a_server_silent_before_its_answer_or_inside_its_body_times_out() {
        // Silent before the head: the first-byte timeout.
        let silent = silent_after(b"").await;
        let error = HttpClient::new(true)
            .send(get(&silent), timeouts(1_000, 200, 1_000))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::ConnectionReadTimeout), "{error:?}");

        // Silent after part of the body: the between-bytes timeout.
        let stalling = silent_after(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf").await;
        let response = HttpClient::new(true)
            .send(get(&stalling), timeouts(1_000, 1_000, 200))
            .await
            .unwrap();
        let error = body(response).await.unwrap_err();
        assert!(matches!(error, Error::ConnectionReadTimeout), "{error:?}");
    }
}
