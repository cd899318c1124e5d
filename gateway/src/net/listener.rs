//! The AudioSocket listener: accepts connections, caps concurrent calls, shuts down
//! gracefully (house style 6.7).
//!
//! Every session is a task on a [`TaskTracker`], so shutdown can wait for all of them:
//! on SIGINT/SIGTERM the gateway asks every call to hang up (`00 00 00`, the dialplan
//! continues), the listener stops accepting, waits for the sessions to finish, and
//! only then are the engine stopped and recordings finalized.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sip_glue::audiosocket::{Limits, Message, ServerCodec, ServerMessage};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::FramedRead;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::net::session;
use crate::service::Gateway;

/// How long a refused connection is given to say who it is (for the log line).
const REFUSAL_ID_WAIT: Duration = Duration::from_millis(500);
/// Longest pause after repeated accept errors (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections until shutdown, then waits for every session to end.
pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener) {
    let max_calls = gateway.config().audiosocket.max_calls;
    let slots = Arc::new(Semaphore::new(max_calls));
    let sessions = TaskTracker::new();
    let shutdown = gateway.shutdown_token();
    let mut backoff = Duration::from_millis(10);
    match listener.local_addr() {
        Ok(addr) => info!(%addr, max_calls, "AudioSocket listener ready"),
        Err(e) => warn!(error = %e, "AudioSocket listener ready (address unknown)"),
    }
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(permit) => {
                        sessions.spawn(session::run(Arc::clone(&gateway), stream, peer, permit));
                    }
                    Err(_) => {
                        gateway.count_refused();
                        sessions.spawn(refuse(stream, peer, max_calls));
                    }
                }
            }
            Err(e) => {
                // Transient (EMFILE, ECONNABORTED...): back off instead of spinning.
                error!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
    drop(listener);
    sessions.close();
    info!(
        sessions = sessions.len(),
        "listener closed; waiting for calls to hang up"
    );
    sessions.wait().await;
}

/// Closes a connection beyond the call cap cleanly: reads its ID for the log line,
/// then sends `00 00 00` so the dialplan continues.
async fn refuse(stream: TcpStream, peer: std::net::SocketAddr, max_calls: usize) {
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = FramedRead::new(read_half, ServerCodec::new(Limits::default()));
    let uuid = match tokio::time::timeout(REFUSAL_ID_WAIT, reader.next()).await {
        Ok(Some(Ok(Message::Id(id)))) => Some(id),
        _ => None,
    };
    warn!(%peer, uuid = ?uuid, max_calls, "call cap reached; refusing the call");
    let mut bytes = [0u8; 3];
    if ServerMessage::Hangup.write_to(&mut bytes).is_ok() {
        let _ = tokio::time::timeout(REFUSAL_ID_WAIT, write_half.write_all(&bytes)).await;
    }
    let _ = write_half.shutdown().await;
}
