//! Plain-TCP test apps for what HTTP cannot show: `knit-lab banner`, a
//! server-speaks-first protocol (a proxy that waits for the client's first
//! bytes to detect the protocol delays its greeting), and `knit-lab
//! tcp-echo`, which answers only after the client's FIN (so it works only
//! if every hop passes half-close on).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{LabError, Result};

/// Longest line the banner server reads.
pub const MAX_LINE: usize = 64 * 1024;
/// Most the tcp-echo buffers before its client's FIN.
pub const MAX_TCP_ECHO: u64 = 256 * 1024 * 1024;
/// Connections idle this long are closed, so forgotten clients cost nothing.
const IDLE: Duration = Duration::from_secs(300);

/// The banner's greeting for `pod`.
pub fn greeting(pod: &str) -> String {
    format!("220 {pod} ready\r\n")
}

/// The pod named by a greeting line (`220 <pod> ready`).
pub fn parse_greeting(line: &str) -> Option<String> {
    let pod = line
        .trim_end()
        .strip_prefix("220 ")?
        .strip_suffix(" ready")?;
    (!pod.is_empty() && !pod.contains(' ')).then(|| pod.to_string())
}

async fn bind(what: &str, listen: SocketAddr, pod: &str) -> Result<TcpListener> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| LabError::io(format!("{what} binding {listen}"), e))?;
    tracing::info!(pod, %listen, "{what} listening");
    Ok(listener)
}

/// Accepts forever, handling each connection in its own task.
async fn accept_loop<F, Fut>(listener: TcpListener, what: &'static str, pod: &str, handle: F)
where
    F: Fn(TcpStream, Arc<str>) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let pod: Arc<str> = Arc::from(pod);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("{what} accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let fut = handle(stream, pod.clone());
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(%peer, "{what} connection ended: {e}");
            }
        });
    }
}

/// Binds `listen` and serves the banner protocol until stopped.
pub async fn run_banner(pod: &str, listen: SocketAddr) -> Result<()> {
    let listener = bind("banner", listen, pod).await?;
    serve_banner(listener, pod).await;
    Ok(())
}

/// Serves the banner protocol on an already bound listener.
pub async fn serve_banner(listener: TcpListener, pod: &str) {
    accept_loop(listener, "banner", pod, banner_connection).await
}

/// Greets at once, then echoes each line until `QUIT` (answered `221`).
async fn banner_connection(stream: TcpStream, pod: Arc<str>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    w.write_all(greeting(&pod).as_bytes()).await?;
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut r).take(MAX_LINE as u64);
        let n = match tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line)).await {
            Ok(n) => n?,
            Err(_) => {
                w.write_all(b"421 idle too long\r\n").await?;
                break;
            }
        };
        if n == 0 {
            break;
        }
        if !line.ends_with(b"\n") && n == MAX_LINE {
            w.write_all(b"500 line too long\r\n").await?;
            break;
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim_end().eq_ignore_ascii_case("QUIT") {
            w.write_all(b"221 bye\r\n").await?;
            break;
        }
        w.write_all(&line).await?;
    }
    w.shutdown().await
}

/// Binds `listen` and serves the tcp-echo until stopped.
pub async fn run_tcp_echo(pod: &str, listen: SocketAddr) -> Result<()> {
    let listener = bind("tcp-echo", listen, pod).await?;
    serve_tcp_echo(listener, pod).await;
    Ok(())
}

/// Serves the tcp-echo on an already bound listener.
pub async fn serve_tcp_echo(listener: TcpListener, pod: &str) {
    accept_loop(listener, "tcp-echo", pod, tcp_echo_connection).await
}

/// Reads to the client's FIN, then writes everything back followed by
/// `|<pod>` and closes.
async fn tcp_echo_connection(mut stream: TcpStream, pod: Arc<str>) -> std::io::Result<()> {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(IDLE, stream.read(&mut buf)).await {
            Ok(n) => n?,
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle")),
        };
        if n == 0 {
            break;
        }
        if data.len() as u64 + n as u64 > MAX_TCP_ECHO {
            // Dropping the socket with unread data resets the connection,
            // which the client reports.
            return Err(std::io::Error::other(format!(
                "client sent more than {MAX_TCP_ECHO} bytes before its FIN"
            )));
        }
        data.extend_from_slice(&buf[..n]);
    }
    data.push(b'|');
    data.extend_from_slice(pod.as_bytes());
    stream.write_all(&data).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings() {
        assert_eq!(greeting("web-1"), "220 web-1 ready\r\n");
        assert_eq!(parse_greeting(&greeting("web-1")).as_deref(), Some("web-1"));
        assert_eq!(parse_greeting("220  ready"), None);
        assert_eq!(parse_greeting("421 web ready"), None);
        assert_eq!(parse_greeting("220 web"), None);
    }
}
