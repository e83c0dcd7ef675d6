//! The signals that stop a binary gracefully: SIGTERM (systemd, Kubernetes) and SIGINT (Ctrl-C).

/// Resolves at the first SIGTERM or SIGINT.
///
/// # Panics
/// When the SIGTERM handler cannot be installed (no signal support in the runtime), which
/// only happens at start.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
