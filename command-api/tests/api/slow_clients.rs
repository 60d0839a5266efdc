//! Slow clients cost nothing: stalled bodies hold no concurrency slot, an
//! oversized `Content-Length` is refused before the body, and half-sent or
//! idle connections are closed after their timeouts.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::helpers::spawn_app_with;

/// Generous bound for anything that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(5);

async fn connect(address: &str) -> TcpStream {
    let host = address.trim_start_matches("http://");
    TcpStream::connect(host).await.expect("connected")
}

/// A connection that sent a `POST /v1/users` header announcing 64 bytes of
/// body, and one byte of it.
async fn stalled_body(address: &str) -> TcpStream {
    let mut stream = connect(address).await;
    stream
        .write_all(
            b"POST /v1/users HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 64\r\n\r\n{",
        )
        .await
        .expect("headers and one byte sent");
    stream
}

/// Reads until the server closes the connection, within `bound`.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> String {
    let mut answer = Vec::new();
    let read = timeout(bound, stream.read_to_end(&mut answer)).await;
    let closed = match read {
        Ok(Ok(_)) => true,
        // A reset is a close too.
        Ok(Err(err)) => matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        Err(_) => false,
    };
    assert!(closed, "the server closed the connection within {bound:?}");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_stalled_bodies_neither_block_new_users_nor_delay_refusing_an_oversized_body()
{
    // More stalled clients than concurrency slots, and a body timeout that
    // outlasts the test: only a slot held while waiting could block.
    let app = spawn_app_with(|config| {
        config.concurrency_limit = Some(64);
        config.body_read_timeout = Duration::from_secs(60);
        config.request_timeout = Duration::from_secs(60);
    })
    .await;
    let mut stalled = Vec::with_capacity(300);
    for _ in 0..300 {
        stalled.push(stalled_body(&app.address).await);
    }

    for n in 0..5 {
        let created = timeout(
            PROMPTLY,
            app.post_json(
                "/v1/users",
                &json!({ "email": format!("user{n}@example.com"), "name": "Unblocked" }),
            ),
        )
        .await
        .expect("answered while 300 bodies stall");
        assert_eq!(created.status(), 201);
    }

    // Headers only: the body is never sent, so the answer cannot wait for it.
    let mut oversized = connect(&app.address).await;
    oversized
        .write_all(
            b"POST /v1/courses HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 10000000\r\n\r\n",
        )
        .await
        .expect("headers sent");
    let mut answer = vec![0_u8; 4096];
    let read = timeout(PROMPTLY, oversized.read(&mut answer))
        .await
        .expect("413 well before the body timeout")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("x-request-id"),
        "{answer}"
    );

    // The stalled clients are still connected: nothing was freed for them.
    let mut probe = [0_u8; 1];
    let still_waiting = timeout(Duration::from_millis(100), stalled[0].read(&mut probe)).await;
    assert!(still_waiting.is_err(), "a stalled body is still waited for");
    assert_eq!(app.count("SELECT count(*) FROM users").await, 5);
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_400_after_the_body_read_timeout_and_closed() {
    let app = spawn_app_with(|config| {
        config.body_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stream = stalled_body(&app.address).await;
    let answer = read_until_closed(&mut stream, PROMPTLY).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");
    assert_eq!(app.count("SELECT count(*) FROM users").await, 0);
}

#[tokio::test]
async fn a_socket_that_sends_half_a_header_line_is_closed_after_the_header_read_timeout() {
    let app = spawn_app_with(|config| {
        config.connections.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stream = connect(&app.address).await;
    stream
        .write_all(b"POST /v1/us")
        .await
        .expect("half a line sent");
    read_until_closed(&mut stream, PROMPTLY).await;
}

#[tokio::test]
async fn a_kept_alive_connection_with_nothing_to_say_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(|config| {
        config.connections.header_read_timeout = Duration::from_secs(60);
        config.connections.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stream = connect(&app.address).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request sent");
    // Well under the header-read timeout, so only the idle timeout closes it.
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// What the README documents for requests hyper refuses before routing: a
/// bare status line, no body, then the connection closes. If hyper ever
/// offers a hook, this test shows the table to update.
#[tokio::test]
async fn requests_hyper_refuses_before_routing_get_its_bare_status_line_as_documented() {
    let app = spawn_app_with(|_| {}).await;
    let many_headers: String = (0..101).map(|n| format!("X-H{n}: 1\r\n")).collect();
    let cases = [
        (
            "a malformed request line",
            "GET /v1 users HTTP/1.1\r\n\r\n".to_owned(),
            "400",
        ),
        (
            "an unparseable Content-Length",
            "POST /v1/users HTTP/1.1\r\nHost: l\r\nContent-Length: ten\r\n\r\n".to_owned(),
            "400",
        ),
        (
            "more than 100 header fields",
            format!("GET /health HTTP/1.1\r\nHost: l\r\n{many_headers}\r\n"),
            "431",
        ),
    ];
    for (what, request, status) in cases {
        let mut stream = connect(&app.address).await;
        stream
            .write_all(request.as_bytes())
            .await
            .expect("request sent");
        let answer = read_until_closed(&mut stream, PROMPTLY).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {answer}"
        );
        let body = answer.split_once("\r\n\r\n").map(|(_, body)| body);
        assert_eq!(body, Some(""), "{what}: {answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("x-request-id"),
            "{what}: {answer}"
        );
    }
}
