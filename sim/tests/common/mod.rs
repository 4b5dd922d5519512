//! Helpers shared by the integration tests.

/// Whether a read saw the connection end (end of stream or a reset), not a read timeout on a
/// connection that is still open.
pub(crate) fn closed(read: std::io::Result<usize>) -> bool {
    match read {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}
