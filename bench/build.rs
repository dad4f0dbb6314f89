use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let mut config = tonic_prost_build::Config::new();
    // Vendored protoc: building needs no system protoc (as proto/build.rs).
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(false)
        .compile_with_config(config, &["proto/helloworld.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/helloworld.proto");
    Ok(())
}
