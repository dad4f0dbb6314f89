use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    // Vendored protoc: `cargo build` needs no system protoc.
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("pod_descriptor.bin"))
        .compile_with_config(config, &["pod.proto"], &["."])?;
    println!("cargo:rerun-if-changed=pod.proto");
    Ok(())
}
