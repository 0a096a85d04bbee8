//! The in-process shutdown signal shared by knitd's tasks.

use tokio::sync::watch;

/// Resolves once shutdown was requested (the flag turned true) or its sender
/// is gone, which also means nobody will keep knitd running.
pub async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: treat it as shutdown.
    let _ = shutdown.wait_for(|stop| *stop).await;
}
