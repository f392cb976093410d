//! The command line's standard output: a reader that closed its end
//! (`status | head`) ends the command quietly, with exit 0, instead of a
//! panic or an error. Every command writes its stdout through [`stdout`].

use std::io::Write;

/// Why a write to standard output failed: its reader closed it.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed by its reader")]
pub(crate) struct StdoutClosed;

/// Standard output, locked, whose broken pipe is a [`StdoutClosed`].
pub(crate) struct Stdout(std::io::StdoutLock<'static>);

/// Standard output for a command's results.
pub(crate) fn stdout() -> Stdout {
    Stdout(std::io::stdout().lock())
}

fn closed(e: std::io::Error) -> std::io::Error {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe => std::io::Error::new(e.kind(), StdoutClosed),
        _ => e,
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(closed)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(closed)
    }
}

/// Whether a command ended because its standard output was closed.
pub(crate) fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<StdoutClosed>()
            || cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_of_stdout_is_told_apart_from_other_errors() {
        let e = anyhow::Error::from(closed(std::io::ErrorKind::BrokenPipe.into()))
            .context("writing the result");
        assert!(is_closed(&e));
        let other = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(
            !is_closed(&other),
            "a broken pipe elsewhere (a socket) is an error"
        );
        let full = anyhow::Error::from(closed(std::io::ErrorKind::StorageFull.into()));
        assert!(!is_closed(&full));
    }
}
