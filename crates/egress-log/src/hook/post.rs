//! The webhook's POST: hyper's HTTP/1.1 client connection over a TCP stream,
//! kept open between POSTs and made again when the endpoint closes it.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// Where records are POSTed.
pub struct Endpoint {
    uri: Uri,
    host_port: String,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Endpoint {
    /// Checks `url`: `http://host[:port]/path`.
    pub fn new(url: &str, timeout: Duration) -> Result<Endpoint, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "url {url:?}: egressd POSTs records over plain HTTP; for HTTPS, \
                     point it at a local TLS-terminating proxy (for example haproxy on loopback)"
                ))
            }
            _ => return Err(format!("url {url:?}: expected http://host:port/path")),
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("url {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let host_port = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Endpoint {
            uri,
            host_port,
            timeout,
            conn: None,
        })
    }

    /// POSTs `body` as JSON within the timeout: the status, or why there is none.
    pub async fn post(&mut self, body: Vec<u8>) -> Result<u16, String> {
        match tokio::time::timeout(self.timeout, self.post_inner(body)).await {
            Ok(result) => result,
            Err(_) => {
                self.conn = None;
                Err(format!("no answer within {:?}", self.timeout))
            }
        }
    }

    async fn post_inner(&mut self, body: Vec<u8>) -> Result<u16, String> {
        let mut conn = match self.conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        conn.ready().await.map_err(|e| e.to_string())?;
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let request =
            hyper::Request::post(self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                .header(hyper::header::HOST, authority)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())?;
        let response = conn
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        // Read the answer to its end so the connection can carry the next POST.
        let _ = response.into_body().collect().await;
        self.conn = Some(conn);
        Ok(status)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect(&self.host_port)
            .await
            .map_err(|e| format!("connect to {}: {e}", self.host_port))?;
        let _ = stream.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }
}
