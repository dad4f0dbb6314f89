//! The call record and its two printed forms live in the `wire` crate (the
//! mesh reads them back); what only a client does is here: reading the
//! filter's tags from response headers, and an error chain as one line.

use hyper::HeaderMap;
use wire::headers::{UPSTREAM_CONNECTION_ID, UPSTREAM_CONNECTION_REQUESTS, UPSTREAM_POD};
pub use wire::record::{Call, CallError, Record, Tags, one_line};

/// Reads the tags from response headers (gRPC: initial metadata or the
/// error status' metadata). A header that came more than once is joined
/// with `,` as HTTP does, so a duplicated tag shows instead of hiding.
pub fn tags_from_headers(headers: &HeaderMap) -> Tags {
    Tags {
        pod: header_value(headers, UPSTREAM_POD),
        connection_id: header_value(headers, UPSTREAM_CONNECTION_ID),
        connection_requests: header_value(headers, UPSTREAM_CONNECTION_REQUESTS),
    }
}

/// All values of `name`, comma-joined, lossily decoded; `None` when absent.
pub fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// `head: cause: cause ...` from an error chain, without the noise wrapper
/// layers add: generic "transport error" links and causes already said.
pub fn error_text(head: &str, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !head.trim().is_empty() {
        parts.push(head.trim().to_owned());
    }
    let mut next = source;
    while let Some(cause) = next {
        let text = cause.to_string();
        let said = parts.iter().any(|p| p.contains(text.as_str()));
        if !(text.is_empty() || text == "transport error" || said) {
            parts.push(text);
        }
        next = cause.source();
    }
    one_line(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_drops_wrapper_noise() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let chain = E(
            "transport error",
            Some(Box::new(E(
                "tcp connect error",
                Some(Box::new(E(
                    "tcp connect error",
                    Some(Box::new(E("Connection refused", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_text("connect", Some(&chain)),
            "connect: tcp connect error: Connection refused"
        );
        assert_eq!(error_text("", None), "");
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut h = HeaderMap::new();
        h.append(UPSTREAM_POD, "a".parse().unwrap());
        h.append(UPSTREAM_POD, "b".parse().unwrap());
        h.insert(UPSTREAM_CONNECTION_ID, "5".parse().unwrap());
        let tags = tags_from_headers(&h);
        assert_eq!(tags.pod.as_deref(), Some("a,b"));
        assert_eq!(tags.connection_id.as_deref(), Some("5"));
        assert_eq!(tags.connection_requests, None);
    }
}
