//! The POST a binary message becomes (design.md "Upstream"): the message unchanged as the body,
//! `Host`, `Content-Length`, `Content-Type: application/octet-stream`, and who sent it:
//! `Edgepush-User` (percent-encoded outside visible ASCII), `Edgepush-Connection`,
//! `Edgepush-Node`, `Edgepush-Action` (the code in decimal). HTTP/1.1 keeps the connection
//! open by default (RFC 9112 §9.3), so no `Connection` header is sent.

use super::Target;

/// Who a request is from.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    /// The connection's user.
    pub user: &'a str,
    /// The connection's id, never reused while the process lives.
    pub connection: u64,
    /// This node's name.
    pub node: &'a str,
}

/// Appends the whole request for `message` (its first 4 bytes are the action code `action`).
pub fn write_request(
    out: &mut Vec<u8>,
    target: &Target,
    sender: Sender<'_>,
    action: u32,
    message: &[u8],
) {
    out.reserve(256 + message.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(target.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(target.authority.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/octet-stream\r\nContent-Length: ");
    out.extend_from_slice(message.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nEdgepush-User: ");
    percent_encode(out, sender.user.as_bytes());
    out.extend_from_slice(b"\r\nEdgepush-Connection: ");
    out.extend_from_slice(sender.connection.to_string().as_bytes());
    out.extend_from_slice(b"\r\nEdgepush-Node: ");
    percent_encode(out, sender.node.as_bytes());
    out.extend_from_slice(b"\r\nEdgepush-Action: ");
    out.extend_from_slice(action.to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(message);
}

/// Appends `value` with every byte outside visible ASCII (0x21–0x7E), and `%` itself, as
/// `%XX` (RFC 3986 §2.1), so that a header value never carries a control byte or a space and
/// decodes back to the same bytes.
pub fn percent_encode(out: &mut Vec<u8>, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_request;
    use crate::http::{Status, EMPTY_HEADER};

    #[test]
    fn a_request_reads_back() {
        let target = Target::parse("http://127.0.0.1:8080/act?v=1").expect("url");
        let mut out = Vec::new();
        let message = [0, 0, 0, 110, b'h', b'i'];
        let sender = Sender {
            user: "zoë %x",
            connection: 42,
            node: "n1",
        };
        write_request(&mut out, &target, sender, 110, &message);
        let mut headers = [EMPTY_HEADER; 16];
        let Ok(Status::Complete(head)) = parse_request(&out, &mut headers, 4096) else {
            panic!("not a request: {}", String::from_utf8_lossy(&out));
        };
        assert_eq!(head.method, "POST");
        assert_eq!(&out[head.len..], &message);
        let get = |n: &str| {
            head.headers
                .get(n)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(get("host").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(get("content-length").as_deref(), Some("6"));
        assert_eq!(
            get("content-type").as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(get("edgepush-user").as_deref(), Some("zo%C3%AB%20%25x"));
        assert_eq!(get("edgepush-connection").as_deref(), Some("42"));
        assert_eq!(get("edgepush-node").as_deref(), Some("n1"));
        assert_eq!(get("edgepush-action").as_deref(), Some("110"));
    }
}
