//! gRPC-shaped request bodies: a length-prefixed protobuf message, what a
//! real client sends (h2load posts it with `-d`).

use prost::Message as _;

/// The gRPC message frame: uncompressed flag, big-endian length, message.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// The echo server's method, as the Go demo's path.
pub use proto::GET_INFO_PATH;
/// tonic hello-world's method.
pub const SAY_HELLO_PATH: &str = "/helloworld.Greeter/SayHello";

/// `getInfo` with `delay_ms: 0` (what the looping clients send).
pub fn get_info_body() -> Vec<u8> {
    frame(&proto::InfoRequest { delay_ms: 0 }.encode_to_vec())
}

/// `SayHello {name: "world"}`.
pub fn say_hello_body() -> Vec<u8> {
    frame(
        &crate::hello::HelloRequest {
            name: "world".into(),
        }
        .encode_to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_framed_messages() {
        assert_eq!(get_info_body(), [0, 0, 0, 0, 0]);
        let hello = say_hello_body();
        assert_eq!(&hello[..5], &[0, 0, 0, 0, 7]);
        let decoded = crate::hello::HelloRequest::decode(&hello[5..]).unwrap();
        assert_eq!(decoded.name, "world");
    }
}
