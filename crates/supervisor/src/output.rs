//! Children's output, re-printed line by line with a `[name] ` prefix so interleaved
//! logs still say who wrote what.

use std::io::Write;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Copies `from` to the supervisor's `to`, prefixing every line, until end of file. A
/// last line without a newline is printed too (with one added), so nothing is lost when
/// a child dies mid-line.
pub fn spawn_prefixer<R>(name: &str, from: R, to: Stream) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let prefix = format!("[{name}] ");
    tokio::spawn(async move {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => write_line(&prefix, &line, to),
            }
        }
    })
}

fn write_line(prefix: &str, line: &[u8], to: Stream) {
    let mut out = Vec::with_capacity(prefix.len() + line.len() + 1);
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(line);
    if !line.ends_with(b"\n") {
        out.push(b'\n');
    }
    // One write per line so lines from different children never interleave. A closed
    // stdout/stderr must not stop the supervisor: the children still need supervising.
    let _ = match to {
        Stream::Stdout => std::io::stdout().lock().write_all(&out),
        Stream::Stderr => std::io::stderr().lock().write_all(&out),
    };
}
