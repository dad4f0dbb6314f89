//! The empty proxy-wasm filter: what any Rust filter costs before it does
//! anything. Envoy still calls into the VM for every stream event (create
//! context, request/response headers, body, trailers, done, delete); every
//! callback here is the SDK default (`Action::Continue`). Built with the same
//! `[profile.wasm]` as upstream-tagger (`make bench-deps`).

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext};

    proxy_wasm::main! {{
        proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
            Box::new(Empty)
        });
    }}

    struct Empty;

    impl Context for Empty {}

    impl HttpContext for Empty {}
}
