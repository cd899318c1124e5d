//! Start-up and graceful shutdown of the whole service (used by `main` and by tests).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::net::listener;
use crate::service::Gateway;

/// A running gateway.
pub struct Running {
    /// The service.
    pub gateway: Arc<Gateway>,
    /// The AudioSocket listener's bound address (useful with port 0).
    pub audiosocket_addr: SocketAddr,
    listener: JoinHandle<()>,
}

/// Binds the listeners and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let listen = config.audiosocket.listen;
    let gateway = Gateway::start(config)?;
    let tcp = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for AudioSocket on {listen}: {e}"))?;
    let audiosocket_addr = tcp.local_addr()?;
    let listener = tokio::spawn(listener::serve(Arc::clone(&gateway), tcp));
    Ok(Running {
        gateway,
        audiosocket_addr,
        listener,
    })
}

impl Running {
    /// Graceful shutdown: every call hears `00 00 00`, sessions end, the engine stops
    /// and every recording is finalized before this returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.gateway.begin_shutdown();
        self.listener.await?;
        let gateway = Arc::clone(&self.gateway);
        tokio::task::spawn_blocking(move || gateway.finish()).await?;
        Ok(())
    }
}
