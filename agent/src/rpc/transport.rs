//! TLS plumbing for the cluster port: the accept loop feeding tonic, lazily connecting client
//! channels, and who the peer of a request is.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use pki::{Identity, Role};
use rustls::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Status};

/// The accepted TLS connections of `listener`, as tonic's `serve_with_incoming` wants them.
/// Failed handshakes (no or bad certificate chain, plain TCP) are logged and dropped without
/// disturbing the server.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    trust: Arc<pki::tls::Trust>,
) -> ReceiverStream<Result<Guarded, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    let pending = Pending::default();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster port: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            // Handshakes in progress are bounded, in all and per source address: a flood of
            // connections that never finish their handshake cannot starve real peers.
            let Some(slot) = pending.admit(peer.ip()) else {
                tracing::debug!(%peer, "cluster port: too many handshakes in progress; closed");
                crate::metrics::cluster_port_refused("handshake", tonic::Code::ResourceExhausted);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let trust = trust.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(Guarded::new(tls, trust))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "cluster port: TLS handshake refused")
                    }
                    Err(_) => tracing::info!(%peer, "cluster port: TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// An accepted TLS connection whose client certificate is checked again when the trust changes
/// (a CA rotation completing): once it is no longer trusted the connection fails on its next
/// read, and the peer has to connect again, through a new handshake. A connection set up with a
/// certificate of the old CA does not outlive the rotation.
pub struct Guarded {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    trust: Arc<pki::tls::Trust>,
    seen: u64,
    chain: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    revoked: bool,
}

impl Guarded {
    fn new(inner: tokio_rustls::server::TlsStream<TcpStream>, trust: Arc<pki::tls::Trust>) -> Self {
        let chain = inner.get_ref().1.peer_certificates().map(|c| c.to_vec());
        Guarded {
            seen: trust.generation(),
            inner,
            trust,
            chain,
            revoked: false,
        }
    }

    fn check(&mut self) -> std::io::Result<()> {
        let generation = self.trust.generation();
        if generation != self.seen {
            self.seen = generation;
            if let Some(chain) = &self.chain
                && !self.trust.accepts(chain)
            {
                self.revoked = true;
                let who = chain
                    .first()
                    .and_then(|c| Identity::from_der(c).ok())
                    .map(|id| id.node_id)
                    .unwrap_or_default();
                let peer = self.inner.get_ref().0.peer_addr().ok();
                tracing::info!(node = %who, ?peer, "cluster port: closing a connection whose certificate is no longer trusted (CA rotated)");
                crate::metrics::cluster_port_refused("handshake", tonic::Code::Unauthenticated);
            }
        }
        if self.revoked {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the peer's certificate is no longer trusted (the cluster's CA was rotated)",
            ));
        }
        Ok(())
    }
}

impl tokio::io::AsyncRead for Guarded {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return std::task::Poll::Ready(Err(e));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Guarded {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = <tokio_rustls::server::TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once, in all and from one source address.
const MAX_PENDING: usize = 256;
const MAX_PENDING_PER_SOURCE: usize = 16;

/// Handshakes in progress, by source address.
#[derive(Debug, Clone, Default)]
struct Pending(Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>);

/// One admitted handshake; its slot frees when dropped.
struct Slot(Pending, IpAddr);

impl Pending {
    fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = m.values().sum();
        let here = m.entry(ip).or_insert(0);
        if total >= MAX_PENDING || *here >= MAX_PENDING_PER_SOURCE {
            if *here == 0 {
                m.remove(&ip);
            }
            return None;
        }
        *here += 1;
        Some(Slot(self.clone(), ip))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// A channel to `addr` (host:port) over TLS with `tls`; it connects on first use and reconnects
/// after failures.
pub fn channel(addr: &str, tls: Arc<ClientConfig>, timeout: Duration) -> Result<Channel, Status> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(format!("bad manager address {addr:?}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    let connector = TlsConnector::from(tls);
    let connect = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(2377);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector
                .connect(pki::tls::manager_server_name(), tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// The verified identity of the peer, from its client certificate.
pub fn peer<T>(req: &Request<T>) -> Result<Identity, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "this service of the cluster port needs a node certificate signed by the cluster CA; join the swarm first",
        )
    })?;
    let first = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
    Identity::from_der(first).map_err(|e| Status::unauthenticated(e.to_string()))
}

/// The peer, which must hold a manager certificate of `cluster_id`.
pub fn manager_peer<T>(req: &Request<T>, cluster_id: &str) -> Result<Identity, Status> {
    let id = member_peer(req, cluster_id)?;
    if id.role != Role::Manager {
        return Err(Status::permission_denied(format!(
            "node {} holds a worker certificate; only managers may use this service",
            id.node_id
        )));
    }
    Ok(id)
}

/// The peer, which must hold a certificate of `cluster_id` (any role).
pub fn member_peer<T>(req: &Request<T>, cluster_id: &str) -> Result<Identity, Status> {
    let id = peer(req)?;
    if id.cluster_id != cluster_id {
        return Err(Status::permission_denied(format!(
            "the certificate is for cluster {}, not {cluster_id}",
            id.cluster_id
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_handshakes_are_bounded_per_source_and_freed() {
        let p = Pending::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let slots: Vec<Slot> = (0..MAX_PENDING_PER_SOURCE)
            .map(|_| p.admit(a).expect("under the cap"))
            .collect();
        assert!(p.admit(a).is_none(), "one source is capped");
        let other = p.admit(b).expect("another source still gets in");
        drop(slots);
        drop(other);
        assert!(p.0.lock().unwrap().is_empty(), "every slot freed");
        assert!(p.admit(a).is_some());
    }
}
