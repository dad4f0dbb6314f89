//! A minimal HTTP/1.1 client over `std::net`: enough for Envoy's admin API
//! and plain-HTTP checks through a listener, with no async runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::{Error, Result};

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// In arrival order, names lowercased; repeated headers stay repeated.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// Every value of header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of header `name`, if present exactly once.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self.header_values(name).as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// `GET path` on `addr`, one request per connection (`Connection: close`).
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    request(addr, "GET", path, &[], timeout)
}

/// One request with extra headers, one connection, read to the end.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response> {
    let fail = |what: &str, e: std::io::Error| {
        Error::io(format!("{what} {method} http://{addr}{path}"), e)
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail("connect for", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| fail("configure socket for", e))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| fail("send", e))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| fail("read response of", e))?;
    parse_response(&raw)
}

/// Parses a full HTTP/1.1 response (Content-Length, chunked, or to EOF).
pub fn parse_response(raw: &[u8]) -> Result<Response> {
    let bad = |why: &str| Error::Http(format!("malformed response: {why}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(&format!("header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("broken chunked body"))?
    } else {
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        match length {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(_) => return Err(bad("body shorter than content-length")),
            None => rest.to_vec(),
        }
    };
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_eof_bodies() {
        let cases: &[(&[u8], u16, &str)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello+junk", 200, "hello"),
            (
                b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n",
                503,
                "wikipedia",
            ),
            (b"HTTP/1.0 404 Not Found\r\n\r\nto the end", 404, "to the end"),
        ];
        for (raw, status, body) in cases {
            let r = parse_response(raw).unwrap();
            assert_eq!((r.status, r.body.as_str()), (*status, *body));
        }
    }

    #[test]
    fn repeated_headers_are_kept() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nX-B:  3 \r\n\r\n").unwrap();
        assert_eq!(r.header_values("x-a"), ["1", "2"]);
        assert_eq!(r.header("x-a"), None);
        assert_eq!(r.header("X-B"), Some("3"));
    }

    #[test]
    fn malformed_responses_are_errors() {
        for raw in [
            &b"garbage"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
        ] {
            assert!(parse_response(raw).is_err(), "{raw:?}");
        }
    }
}
