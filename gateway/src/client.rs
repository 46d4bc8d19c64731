//! The device side of the gateway protocol: a small HTTPS JSON client that
//! pins the gateway CA and may present a device certificate.

use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

/// Why a request failed before an answer came back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The gateway URL is not `https://HOST:PORT`.
    #[error("gateway URL {0:?} is not https://HOST[:PORT]")]
    Url(String),
    /// TLS setup (the CA or the client certificate).
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection or the exchange.
    #[error("talking to {url}: {problem}")]
    Io {
        /// The gateway.
        url: String,
        /// What went wrong.
        problem: String,
    },
}

/// A gateway endpoint with its pinned CA.
#[derive(Clone)]
pub struct GatewayClient {
    host: String,
    port: u16,
    url: String,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl GatewayClient {
    /// A client for `url`, trusting only `ca_pem`, presenting
    /// `identity` (certificate PEM, key PEM) when given.
    pub fn new(
        url: &str,
        ca_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<GatewayClient, ClientError> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| ClientError::Url(url.to_owned()))?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (
                h.to_owned(),
                p.parse().map_err(|_| ClientError::Url(url.to_owned()))?,
            ),
            _ => (rest.to_owned(), 443),
        };
        let tls = |e: String| ClientError::Tls(e);
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| tls(e.to_string()))?)
                .map_err(|e| tls(e.to_string()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<_, _>>()
                        .map_err(|e| tls(e.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| tls(e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(GatewayClient {
            host,
            port,
            url: url.to_owned(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// `POST path` with a JSON body; the status and the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), ClientError> {
        self.request(hyper::Method::POST, path, Some(body)).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<(u16, Value), ClientError> {
        self.request(hyper::Method::GET, path, None).await
    }

    /// A TLS connection to the gateway (the pinned CA, the identity if
    /// any), for protocols other than one JSON request: the proxy's CONNECT.
    pub async fn connect(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
        let io = |problem: String| ClientError::Io {
            url: self.url.clone(),
            problem,
        };
        let tcp = tokio::net::TcpStream::connect((self.host.trim_matches(['[', ']']), self.port))
            .await
            .map_err(|e| io(e.to_string()))?;
        let name = ServerName::try_from(self.host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| io(e.to_string()))?;
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| io(format!("TLS: {e}")))
    }

    /// The TLS connector (the pinned CA and the identity), to run TLS
    /// inside a tunnel.
    pub fn connector(&self) -> &tokio_rustls::TlsConnector {
        &self.connector
    }

    async fn request(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        let io = |problem: String| ClientError::Io {
            url: self.url.clone(),
            problem,
        };
        let tls = self.connect().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| io(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| io(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| io(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| io(e.to_string()))?
            .to_bytes();
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, value))
    }
}
