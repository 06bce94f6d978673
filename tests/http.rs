//! What the public listener answers before (or instead of) an upgrade.

mod common;

use std::io::Write;
use std::thread;
use std::time::Duration;

use common::{
    connect, guarded, http_exchange, read_full_response, upgrade_request, wait_until, RawClient,
    TestServer, KEY,
};
use edgepush::config::Config;

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// An upgrade request to `/echo` with `headers` in place of the usual ones.
fn upgrade_with(headers: &[&str]) -> Vec<u8> {
    let mut request = String::from("GET /echo HTTP/1.1\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

const HOST: &str = "Host: localhost";
const UPGRADE: &str = "Upgrade: websocket";
const CONNECTION: &str = "Connection: Upgrade";
const VERSION: &str = "Sec-WebSocket-Version: 13";

fn key_header() -> String {
    format!("Sec-WebSocket-Key: {KEY}")
}

#[test]
fn root_serves_the_demo_page() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let response = http_exchange(server.addr(), &get("/"));
        assert_eq!(response.status, 200);
        assert!(response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html")));
        let body = response.body_text();
        assert!(body.contains("<html"), "not HTML: {body:.200}");
        assert_eq!(
            body.as_bytes(),
            edgepush::server::http::DEMO_PAGE.as_bytes()
        );
    });
}

#[test]
fn head_root_has_no_body() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let mut stream = connect(server.addr());
        stream
            .write_all(b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let (response, rest) = common::read_response_head(&mut stream);
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-length"),
            Some(edgepush::server::http::DEMO_PAGE.len().to_string().as_str())
        );
        let mut body = rest;
        std::io::Read::read_to_end(&mut stream, &mut body).unwrap();
        assert!(body.is_empty(), "HEAD answered with a body");
    });
}

#[test]
fn healthz_is_ok() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let response = http_exchange(server.addr(), &get("/healthz"));
        assert_eq!(response.status, 200);
        assert_eq!(response.body_text().trim(), "ok");
        // A query string does not change the route.
        let response = http_exchange(server.addr(), &get("/healthz?probe=1"));
        assert_eq!(response.status, 200);
    });
}

#[test]
fn unknown_path_is_404() {
    guarded(|| {
        let server = TestServer::start(common::config());
        for path in ["/nope", "/echo/", "/healthz/x", "/ws"] {
            let response = http_exchange(server.addr(), &get(path));
            assert_eq!(response.status, 404, "GET {path}");
        }
        // The echo path without an upgrade is no page either.
        assert_eq!(http_exchange(server.addr(), &get("/echo")).status, 404);
    });
}

#[test]
fn upgrade_to_unknown_path_is_404() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let response = http_exchange(server.addr(), upgrade_request("/nope").as_bytes());
        assert_eq!(response.status, 404);
        assert_eq!(server.stats().open(), 0);
    });
}

#[test]
fn upgrade_with_echo_disabled_is_404() {
    guarded(|| {
        let server = TestServer::start(Config {
            echo_path: None,
            ..common::config()
        });
        let response = http_exchange(server.addr(), upgrade_request("/echo").as_bytes());
        assert_eq!(response.status, 404);
    });
}

#[test]
fn other_methods_are_405() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let response = http_exchange(
            server.addr(),
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(response.status, 405);
        assert_eq!(response.header("allow"), Some("GET"));
        // An upgrade attempted with POST, too.
        let request = upgrade_request("/echo").replacen("GET", "POST", 1);
        let response = http_exchange(server.addr(), request.as_bytes());
        assert_eq!(response.status, 405);
    });
}

#[test]
fn wrong_version_is_426_with_version_header() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let key = key_header();
        let request = upgrade_with(&[HOST, UPGRADE, CONNECTION, &key, "Sec-WebSocket-Version: 8"]);
        let response = http_exchange(server.addr(), &request);
        assert_eq!(response.status, 426);
        assert_eq!(response.header("sec-websocket-version"), Some("13"));
    });
}

#[test]
fn malformed_upgrades_are_400() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let key = key_header();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "missing key",
                upgrade_with(&[HOST, UPGRADE, CONNECTION, VERSION]),
            ),
            (
                "key of the wrong length",
                upgrade_with(&[
                    HOST,
                    UPGRADE,
                    CONNECTION,
                    VERSION,
                    "Sec-WebSocket-Key: dG9vIHNob3J0",
                ]),
            ),
            (
                "missing version",
                upgrade_with(&[HOST, UPGRADE, CONNECTION, &key]),
            ),
            (
                "missing Host",
                upgrade_with(&[UPGRADE, CONNECTION, VERSION, &key]),
            ),
            (
                "Connection without upgrade",
                upgrade_with(&[HOST, UPGRADE, "Connection: keep-alive", VERSION, &key]),
            ),
            (
                "Upgrade not websocket",
                upgrade_with(&[HOST, "Upgrade: h2c", CONNECTION, VERSION, &key]),
            ),
            (
                "HTTP/1.0",
                upgrade_request("/echo")
                    .replacen("HTTP/1.1", "HTTP/1.0", 1)
                    .into_bytes(),
            ),
        ];
        for (what, request) in cases {
            let response = http_exchange(server.addr(), &request);
            assert_eq!(response.status, 400, "{what}: {response:?}");
        }
        assert_eq!(server.stats().open(), 0);
    });
}

#[test]
fn oversized_head_is_431() {
    guarded(|| {
        let server = TestServer::start(common::config());
        // Over the default --max-request-head (16 KiB).
        let big = format!("X-Filler: {}", "a".repeat(17 * 1024));
        let key = key_header();
        let request = upgrade_with(&[HOST, UPGRADE, CONNECTION, VERSION, &key, &big]);
        let response = http_exchange(server.addr(), &request);
        assert_eq!(response.status, 431);
        // The head need not be complete: the limit holds while it is still arriving.
        let mut stream = connect(server.addr());
        stream
            .write_all(format!("GET / HTTP/1.1\r\n{big}").as_bytes())
            .unwrap();
        assert_eq!(read_full_response(&mut stream).status, 431);
    });
}

#[test]
fn head_just_under_the_limit_upgrades() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let base = upgrade_request("/echo").len();
        let filler_len = 16 * 1024 - base - "X-Filler: \r\n".len() - 1;
        let mut request = upgrade_request("/echo");
        request.truncate(request.len() - 2);
        request.push_str(&format!("X-Filler: {}\r\n\r\n", "a".repeat(filler_len)));
        assert!(request.len() < 16 * 1024);
        let stream = connect(server.addr());
        let mut stream = stream;
        stream.write_all(request.as_bytes()).unwrap();
        let (response, rest) = common::read_response_head(&mut stream);
        assert_eq!(response.status, 101);
        let mut client = RawClient::from_parts(stream, rest);
        client.round_trip("big head");
    });
}

#[test]
fn too_many_headers_is_431() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let key = key_header();
        // 128 fields are allowed (edgepush::http::MAX_HEADERS): 5 + 124 is one too many.
        let extra: Vec<String> = (0..124).map(|i| format!("X-H{i}: v")).collect();
        let mut headers: Vec<&str> = vec![HOST, UPGRADE, CONNECTION, VERSION, &key];
        headers.extend(extra.iter().map(String::as_str));
        let response = http_exchange(server.addr(), &upgrade_with(&headers));
        assert_eq!(response.status, 431);
    });
}

#[test]
fn max_connections_gives_503_and_frees_on_close() {
    guarded(|| {
        let server = TestServer::start(Config {
            max_connections: 2,
            ..common::config()
        });
        assert_eq!(server.max_connections(), 2);
        let mut first = RawClient::connect(server.addr(), "/echo");
        let mut second = RawClient::connect(server.addr(), "/echo");
        assert_eq!(server.stats().open(), 2);

        let response = http_exchange(server.addr(), upgrade_request("/echo").as_bytes());
        assert_eq!(response.status, 503);
        assert!(response.header("retry-after").is_some());
        // Plain requests are still answered while full.
        assert_eq!(http_exchange(server.addr(), &get("/healthz")).status, 200);
        // The open ones keep working.
        first.round_trip("one");
        second.round_trip("two");

        // A clean close frees the slot.
        first.send_close(1000);
        first.expect_close_code(1000);
        drop(first);
        assert!(
            wait_until(Duration::from_secs(2), || server.stats().open() == 1),
            "open stays at {}",
            server.stats().open()
        );
        let mut third = RawClient::connect(server.addr(), "/echo");
        third.round_trip("three");

        // So does a dropped TCP connection without a close frame.
        let response = http_exchange(server.addr(), upgrade_request("/echo").as_bytes());
        assert_eq!(response.status, 503);
        drop(second);
        assert!(wait_until(Duration::from_secs(2), || server.stats().open() == 1));
        let mut fourth = RawClient::connect(server.addr(), "/echo");
        fourth.round_trip("four");
    });
}

#[test]
fn request_arriving_byte_by_byte_still_upgrades() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let mut stream = connect(server.addr());
        for b in upgrade_request("/echo").bytes() {
            stream.write_all(&[b]).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        let (response, rest) = common::read_response_head(&mut stream);
        assert_eq!(response.status, 101);
        let mut client = RawClient::from_parts(stream, rest);
        client.round_trip("slowly");
    });
}

#[test]
fn request_and_first_frame_in_one_write() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let stream = connect(server.addr());
        // The head and a frame in the same segment: the frame must not be lost.
        let mut client = RawClient::from_parts(stream, Vec::new());
        let mut bytes = upgrade_request("/echo").into_bytes();
        bytes.extend(client.frame(true, edgepush::protocol::frame::OpCode::Text, b"eager"));
        client.send_raw(&bytes).unwrap();
        let (response, rest) = common::read_response_head(&mut client.stream);
        assert_eq!(response.status, 101);
        let mut client = RawClient::from_parts(client.stream, rest);
        assert_eq!(client.recv(), common::Received::Text("eager".into()));
    });
}

/// Every answer the public listener writes, byte for byte: where the HTTP writer lives may
/// change, the wire format may not.
#[test]
fn answers_are_byte_exact() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let text = "Content-Type: text/plain; charset=utf-8";
        let version_8 = upgrade_with(&[
            HOST,
            UPGRADE,
            CONNECTION,
            &key_header(),
            "Sec-WebSocket-Version: 8",
        ]);
        let cases: Vec<(Vec<u8>, String)> = vec![
            (
                get("/nope"),
                format!("HTTP/1.1 404 Not Found\r\n{text}\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"),
            ),
            (
                b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
                format!("HTTP/1.1 200 OK\r\n{text}\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"),
            ),
            (
                b"DELETE / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
                format!(
                    "HTTP/1.1 405 Method Not Allowed\r\n{text}\r\nContent-Length: 19\r\n\
                     Connection: close\r\nAllow: GET\r\n\r\nmethod not allowed\n"
                ),
            ),
            (
                version_8,
                format!(
                    "HTTP/1.1 426 Upgrade Required\r\n{text}\r\nContent-Length: 29\r\n\
                     Connection: close\r\nSec-WebSocket-Version: 13\r\n\r\nonly Sec-WebSocket-Version 13"
                ),
            ),
            (
                // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
                b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                format!(
                    "HTTP/1.1 400 Bad Request\r\n{text}\r\nContent-Length: 29\r\n\
                     Connection: close\r\n\r\nHTTP/1.1 request without Host"
                ),
            ),
            (
                b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
                format!(
                    "HTTP/1.1 400 Bad Request\r\n{text}\r\nContent-Length: 22\r\n\
                     Connection: close\r\n\r\nmalformed HTTP request"
                ),
            ),
        ];
        for (request, expected) in cases {
            let mut stream = connect(server.addr());
            stream.write_all(&request).unwrap();
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut stream, &mut got).unwrap();
            assert_eq!(String::from_utf8_lossy(&got), expected);
        }
        // The 101, up to its blank line (the connection stays open).
        let mut stream = connect(server.addr());
        stream
            .write_all(upgrade_request("/echo").as_bytes())
            .unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            let n = std::io::Read::read(&mut stream, &mut byte).unwrap();
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&got));
            got.push(byte[0]);
        }
        let accept = edgepush::protocol::handshake::accept_key(KEY.as_bytes());
        let expected = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            String::from_utf8_lossy(&accept)
        );
        assert_eq!(String::from_utf8_lossy(&got), expected);
    });
}

// ---- HTTP/1.1 rules (issue 12) ----

#[test]
fn absolute_form_is_served_like_its_path() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let key = key_header();
        for target in [
            format!("http://{}/echo?x=1", server.addr()),
            "HTTP://localhost/echo".to_owned(),
        ] {
            let request = common::upgrade_request_with(&target, &[]);
            let mut stream = connect(server.addr());
            stream.write_all(request.as_bytes()).unwrap();
            let (response, rest) = common::read_response_head(&mut stream);
            assert_eq!(response.status, 101, "{target}");
            RawClient::from_parts(stream, rest).round_trip("absolute");
        }
        let target = format!("http://{}/healthz", server.addr());
        assert_eq!(http_exchange(server.addr(), &get(&target)).status, 200);
        // Other forms and fragments: 400.
        for target in [
            "*",
            "localhost:8080",
            "/ws?user=bob#x",
            "/echo#",
            "ftp://h/echo",
        ] {
            let request = format!(
                "GET {target} HTTP/1.1\r\n{HOST}\r\n{UPGRADE}\r\n{CONNECTION}\r\n{VERSION}\r\n{key}\r\n\r\n"
            );
            let response = http_exchange(server.addr(), request.as_bytes());
            assert_eq!(response.status, 400, "{target}");
        }
    });
}

#[test]
fn repeated_singleton_fields_are_400() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let key = key_header();
        let repeats = [
            HOST,
            "Host: other",
            "Origin: http://a.example",
            VERSION,
            key.as_str(),
            "Authorization: Bearer x",
            "X-Real-IP: 1.2.3.4",
        ];
        for repeated in repeats {
            let mut headers = vec![HOST, UPGRADE, CONNECTION, VERSION, &key];
            if repeated.starts_with("Origin")
                || repeated.starts_with("Authorization")
                || repeated.starts_with("X-Real")
            {
                headers.push(repeated);
            }
            headers.push(repeated);
            let response = http_exchange(server.addr(), &upgrade_with(&headers));
            assert_eq!(response.status, 400, "{repeated}");
        }
        // A body on an upgrade, and bad framing on a plain request.
        let with_body = upgrade_with(&[
            HOST,
            UPGRADE,
            CONNECTION,
            VERSION,
            &key,
            "Content-Length: 2",
        ]);
        assert_eq!(http_exchange(server.addr(), &with_body).status, 400);
        let framing =
            b"GET /healthz HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(http_exchange(server.addr(), framing).status, 501);
    });
}

#[test]
fn max_request_head_is_configurable() {
    guarded(|| {
        // A browser's 8.7 KB cookie jar fits the default.
        let server = TestServer::start(common::config());
        let key = key_header();
        let cookie = format!("Cookie: a={}; token=t", "c".repeat(8700));
        let request = upgrade_with(&[HOST, UPGRADE, CONNECTION, VERSION, &key, &cookie]);
        let mut stream = connect(server.addr());
        stream.write_all(&request).unwrap();
        let (response, rest) = common::read_response_head(&mut stream);
        assert_eq!(response.status, 101);
        RawClient::from_parts(stream, rest).round_trip("cookies");
        // A smaller limit refuses it on both listeners; a larger one takes 40 KB.
        let small = TestServer::start(Config {
            max_request_head: 4 * 1024,
            ..common::config()
        });
        assert_eq!(http_exchange(small.addr(), &request).status, 431);
        let api_request = format!("GET /api/stats HTTP/1.1\r\n{HOST}\r\n{cookie}\r\n\r\n");
        assert_eq!(
            http_exchange(small.api_addr(), api_request.as_bytes()).status,
            431
        );
        let large = TestServer::start(Config {
            max_request_head: 48 * 1024,
            ..common::config()
        });
        let cookie = format!("Cookie: a={}", "c".repeat(40 * 1024));
        let request = upgrade_with(&[HOST, UPGRADE, CONNECTION, VERSION, &key, &cookie]);
        let mut stream = connect(large.addr());
        // In pieces, so the head is buffered across reads.
        for piece in request.chunks(7000) {
            stream.write_all(piece).unwrap();
            thread::sleep(Duration::from_millis(10));
        }
        let (response, rest) = common::read_response_head(&mut stream);
        assert_eq!(response.status, 101);
        let mut client = RawClient::from_parts(stream, rest);
        client.round_trip("a 40 KB head");
        let mut api = common::ApiClient::connect(large.api_addr());
        let api_request = format!("GET /api/stats HTTP/1.1\r\n{HOST}\r\n{cookie}\r\n\r\n");
        api.send_raw(api_request.as_bytes());
        assert_eq!(api.read_response().status, 200);
    });
}
