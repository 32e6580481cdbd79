//! Compiles `tidewatch/v1/*.proto` with protox (a pure-Rust protobuf compiler),
//! so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "tidewatch/v1/records.proto",
        "tidewatch/v1/uplink.proto",
        "tidewatch/v1/kafka.proto",
        "tidewatch/v1/signer.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
