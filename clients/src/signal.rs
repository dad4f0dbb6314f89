//! SIGINT/SIGTERM end the loop with a summary instead of killing the process
//! (Kubernetes sends SIGTERM on pod deletion, a user presses Ctrl-C).

use std::{future::Future, io};

use tokio::signal::unix::{SignalKind, signal};

/// Registers the handlers now (so a signal arriving before the loop first
/// polls is not lost to the default action) and returns a future that
/// completes on the first SIGINT or SIGTERM.
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()> + Send> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        log::info!("{name}: stopping, printing the summary");
    })
}
