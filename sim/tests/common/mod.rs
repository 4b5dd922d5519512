//! Helpers shared by the integration tests.

/// Whether a read saw the connection end (end of stream or a reset), not a read timeout on a
/// connection that is still open.
#[allow(dead_code)] // not every test file reads streams
pub(crate) fn closed(read: std::io::Result<usize>) -> bool {
    match read {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Drives `agent` for `talk`, sending a 20 ms frame whenever one is due once it is connected
/// (what an agent's media loop does, on a 1 ms tick).
#[allow(dead_code, clippy::disallowed_methods)] // not every test file talks; real clock
pub(crate) fn talk(agent: &mut loadgen::peer::Peer, talk: std::time::Duration) {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    let mut next_frame = None;
    while start.elapsed() < talk {
        let now = Instant::now();
        agent.drive(now);
        if agent.times.connected.is_some() {
            let due = *next_frame.get_or_insert(now);
            if now >= due {
                agent.send_frame(now);
                next_frame = Some(due + Duration::from_millis(20));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
