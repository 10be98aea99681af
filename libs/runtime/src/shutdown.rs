//! The shutdown signal: the first SIGINT (Ctrl-C) or SIGTERM.

use std::future::Future;

/// Listens for SIGINT and SIGTERM from this call on, and resolves at the
/// first. The handlers are installed here, not when the future is first
/// polled: a SIGTERM that arrives while the service is still starting (an
/// orchestrator's stop right after it turned ready) asks for the drain
/// instead of killing the process with the signal's default action.
/// Call it inside the runtime, before serving.
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, signal = name, "cannot listen for the signal");
                None
            }
        };
        let mut term = listen(SignalKind::terminate(), "SIGTERM");
        let mut int = listen(SignalKind::interrupt(), "SIGINT");
        async move {
            let term = async {
                match term.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = int => tracing::info!("SIGINT received"),
                () = term => tracing::info!("SIGTERM received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("Ctrl-C received");
    }
}

#[cfg(all(test, unix))]
mod tests {
    use nix::sys::signal::{Signal, raise};
    use std::time::Duration;

    #[tokio::test]
    async fn a_sigterm_before_the_first_poll_is_a_shutdown_not_a_kill() {
        let shutdown = super::signal();
        // Without the handler installed by the call, this would end the
        // test process.
        raise(Signal::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(10), shutdown)
            .await
            .expect("the signal was caught");
    }
}
