//! The programs and modules a run needs, found up front.

use std::path::PathBuf;

use anyhow::ensure;

use crate::{benchmark::Options, h2load};

/// Where `make bench-deps` leaves the empty filter (a relative
/// `CARGO_TARGET_DIR` is taken from the workspace root, as cargo does).
pub fn default_empty_wasm() -> PathBuf {
    harness::paths::target_dir().join("wasm32-wasip1/wasm/empty_filter.wasm")
}

/// Everything a run needs, found up front: one clear error per missing piece.
pub(crate) struct Tools {
    pub envoy: PathBuf,
    pub tagger_wasm: PathBuf,
    pub empty_wasm: PathBuf,
    pub h2load: PathBuf,
    pub server: PathBuf,
    pub hello: PathBuf,
}

impl Tools {
    pub(crate) fn locate(opts: &Options) -> anyhow::Result<Tools> {
        let envoy = harness::paths::envoy_at(opts.envoy.clone())?;
        let tagger_wasm = harness::paths::wasm_at(opts.wasm.clone())?;
        let bin_dir = harness::paths::bin_dir(&["server"])?;
        let empty_wasm = opts.empty_wasm.clone().unwrap_or_else(default_empty_wasm);
        ensure!(
            empty_wasm.exists(),
            "the empty-filter module {} is missing: run `make bench-deps`",
            empty_wasm.display()
        );
        let h2load = h2load::locate()?;
        let hello = bin_dir.join("hello-server");
        ensure!(
            hello.exists(),
            "{} is missing: run `cargo build -p bench` with the same profile as bench (make bench does)",
            hello.display()
        );
        Ok(Tools {
            server: bin_dir.join("server"),
            envoy,
            tagger_wasm,
            empty_wasm,
            h2load,
            hello,
        })
    }
}
