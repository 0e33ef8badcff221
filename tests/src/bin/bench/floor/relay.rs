//! Floor A: the cheapest userspace relay tokio allows. Each byte is read into a buffer and
//! written the other way; both directions are polled by one task; nothing is parsed.
use std::net::SocketAddr;

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

const BUF: usize = 16 * 1024;

pub async fn serve(mut client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let (cr, cw) = client.split();
    let (ur, uw) = up.split();
    let _ = tokio::join!(pump(cr, uw), pump(ur, cw));
}

/// Copies until end of stream, then passes the half-close on.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; BUF];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
