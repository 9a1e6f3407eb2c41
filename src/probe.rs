//! Active health checks: an HTTP GET whose status must fall in `expect`, or a TCP connect.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use shoal_config::HttpCheck;
use tokio::net::TcpStream;

/// One check against `address`. The caller bounds it with the check timeout.
pub async fn probe(address: SocketAddr, http: Option<&HttpCheck>) -> bool {
    let Ok(stream) = TcpStream::connect(address).await else {
        return false;
    };
    let Some(check) = http else {
        return true;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return false;
    };
    let connection = tokio::spawn(connection);
    let request = Request::get(check.path.as_str())
        .header(http::header::HOST, address.to_string())
        .header(http::header::USER_AGENT, "shoal-health-check")
        .body(Empty::new());
    let passed = match request {
        Ok(request) => sender
            .send_request(request)
            .await
            .is_ok_and(|response| check.expect.contains(response.status().as_u16())),
        Err(_) => false,
    };
    connection.abort();
    passed
}
