//! Interop: an independent gRPC implementation (Python grpcio, C-core with its
//! own TLS stack, stubs generated from our .proto files) talks to ingest.

use std::process::Command;
use std::time::Duration;

use tidewatch_tests::*;

fn python(args: &[&str]) -> serde_json::Value {
    let out = run_ok(
        Command::new("python3")
            .arg(root().join("tests/interop/upload.py"))
            .args(args),
    );
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("bad JSON from upload.py ({e}): {out}"))
}

#[test]
fn python_grpcio_uploads_over_mtls_and_gets_its_ack() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s = pki.sensor("py-sensor", "mv-interop");
    let port = free_port();
    let mut ingest = stack.ingest(pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    let port_s = port.to_string();
    let common = [
        "--port",
        port_s.as_str(),
        "--ca",
        s.ca.to_str().unwrap(),
        "--cert",
        s.cert.to_str().unwrap(),
        "--key",
        s.key.to_str().unwrap(),
    ];

    let mut args = common.to_vec();
    args.extend(["--seq", "42"]);
    let v = python(&args);
    let acks = v["acks"].as_array().expect("acks");
    assert_eq!(acks.len(), 1, "{v}");
    assert_eq!(acks[0]["seq"], 42);
    assert_eq!(acks[0]["status"], "ACK_STATUS_ACCEPTED");
    assert_eq!(acks[0]["records"], 3);

    wait_until(
        Duration::from_secs(60),
        "python flows in ClickHouse",
        || (stack.query_u64("SELECT count() FROM tidewatch.flows") == 3).then_some(()),
    );
    let rows = stack
        .query("SELECT sensor_id, vessel, batch_seq, client_ip, server_port, app_protocol, c2s_packets, s2c_bytes FROM tidewatch.flows ORDER BY client_ip")
        .unwrap();
    assert_eq!(
        rows,
        "py-sensor\tmv-interop\t42\t192.168.7.10\t502\tmodbus\t5\t300\n\
         py-sensor\tmv-interop\t42\t192.168.7.11\t502\tmodbus\t5\t300\n\
         py-sensor\tmv-interop\t42\t192.168.7.12\t502\tmodbus\t5\t300\n"
    );

    // Bytes that are not an UploadRequest at the gRPC layer: a clear gRPC
    // error for that stream, and ingest keeps serving.
    let mut args = common.to_vec();
    args.extend(["--mode", "garbage"]);
    let v = python(&args);
    assert_eq!(v["status"], "INTERNAL", "{v}");
    ingest.wait_log(
        "upload stream broken by an invalid message",
        Duration::from_secs(10),
    );
    let mut args = common.to_vec();
    args.extend(["--seq", "43"]);
    let v = python(&args);
    assert_eq!(v["acks"][0]["status"], "ACK_STATUS_ACCEPTED", "{v}");
}
