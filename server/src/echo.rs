//! The `x-echo-response-header: name=value` feature, shared by gRPC and HTTP.

/// Split one `name=value` header value; the name must be a valid lowercase
/// header name the transport does not own
/// ([`wire::headers::is_transport_owned`]).
/// Errors are user-facing messages.
pub fn parse_echo_header(raw: &[u8]) -> Result<(&str, &str), String> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| format!("{} value is not UTF-8", proto::ECHO_RESPONSE_HEADER))?;
    let (name, value) = text.split_once('=').ok_or_else(|| {
        format!(
            "{} value {text:?} is not name=value",
            proto::ECHO_RESPONSE_HEADER
        )
    })?;
    let name = name.trim();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!(
            "{} names {name:?}: not a lowercase header name",
            proto::ECHO_RESPONSE_HEADER
        ));
    }
    if wire::headers::is_transport_owned(name) {
        return Err(format!(
            "{} names {name:?}: a header the transport owns cannot be echoed",
            proto::ECHO_RESPONSE_HEADER
        ));
    }
    Ok((name, value.trim()))
}

#[cfg(test)]
mod tests {
    use super::parse_echo_header;

    #[test]
    fn echo_header_values_are_name_equals_value() {
        assert_eq!(parse_echo_header(b"x-a=b"), Ok(("x-a", "b")));
        assert_eq!(parse_echo_header(b" x-a = b c "), Ok(("x-a", "b c")));
        assert_eq!(parse_echo_header(b"x-a="), Ok(("x-a", "")));
        let reserved = [
            &b"content-length=1"[..],
            b"transfer-encoding=chunked",
            b"connection=close",
            b"te=trailers",
            b"grpc-status=0",
            b"content-type=text/plain",
            b"host=elsewhere",
        ];
        for bad in [&b"x-a"[..], b"=b", b"X-A=b", b"x a=b", b"\xff=b"]
            .into_iter()
            .chain(reserved)
        {
            assert!(parse_echo_header(bad).is_err(), "{bad:?} accepted");
        }
    }
}
