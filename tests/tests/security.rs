//! mTLS refusals, identity claims and bad input at ingest: each is refused
//! with a clear log line, nothing is written, and ingest keeps serving.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use tidewatch_proto::v1::{AckStatus, Encoding, UploadRequest};
use tidewatch_tests::grpc::{request, upload, ClientCert};
use tidewatch_tests::*;

/// Number of ingested batches in Kafka, read back through a sink.
fn stored_flows(stack: &Stack) -> u64 {
    stack.query_u64("SELECT count() FROM tidewatch.flows")
}

#[test]
fn mtls_refusals_and_identity_claims() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let good = pki.sensor("good", "mv-ok");
    // Expired: validity ended in 2020.
    pki.run(&[
        "issue-sensor",
        "--id",
        "old",
        "--vessel",
        "mv-ok",
        "--not-after",
        "2020-01-01",
    ]);
    let expired = pki.cert("old");
    // Revoked before ingest starts (ingest loads the CRL at start).
    let revoked = pki.sensor("gone", "mv-ok");
    pki.run(&["revoke", "--id", "gone"]);
    // Signed by another CA.
    let other = Pki::with_ca_name(stack.path().join("other-pki"), "rogue CA");
    let foreign = other.sensor("good", "mv-ok");

    let port = free_port();
    let mut ingest = stack.ingest(pki, port, &[]);
    let _sink = stack.sink("sink", &[]);
    let ca = pki.dir.join("ca.pem");

    // No client certificate.
    let r = upload(port, &ca, None, vec![request(1, 2, "")]);
    assert!(
        r.is_err(),
        "upload without client certificate succeeded: {r:?}"
    );
    ingest.wait_log("TLS handshake refused", Duration::from_secs(10));
    assert!(
        ingest.log_text().contains("peer sent no certificates"),
        "{}",
        ingest.log_text()
    );

    // Certificate from another CA.
    let r = upload(
        port,
        &ca,
        Some(ClientCert::of(&foreign)),
        vec![request(1, 2, "")],
    );
    assert!(r.is_err(), "foreign certificate accepted: {r:?}");
    ingest.wait_log("UnknownIssuer", Duration::from_secs(10));

    // Expired certificate.
    let r = upload(
        port,
        &ca,
        Some(ClientCert::of(&expired)),
        vec![request(1, 2, "")],
    );
    assert!(r.is_err(), "expired certificate accepted: {r:?}");
    ingest.wait_log("certificate expired", Duration::from_secs(10));

    // Revoked certificate.
    let r = upload(
        port,
        &ca,
        Some(ClientCert::of(&revoked)),
        vec![request(1, 2, "")],
    );
    assert!(r.is_err(), "revoked certificate accepted: {r:?}");
    ingest.wait_log("Revoked", Duration::from_secs(10));

    // A valid certificate whose batch claims another sensor's identity.
    let acks = upload(
        port,
        &ca,
        Some(ClientCert::of(&good)),
        vec![request(1, 2, "someone-else")],
    )
    .unwrap();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].status, AckStatus::Unauthorized as i32);
    assert!(!acks[0].retryable);
    assert!(
        acks[0].detail.contains("someone-else"),
        "{}",
        acks[0].detail
    );
    ingest.wait_log("identity_mismatch", Duration::from_secs(10));

    // Positive control on the same ingest: the good sensor, claiming itself
    // (or nothing), is accepted and its flows are stored under its identity.
    let acks = upload(
        port,
        &ca,
        Some(ClientCert::of(&good)),
        vec![request(2, 3, "good"), request(3, 4, "")],
    )
    .unwrap();
    assert!(
        acks.iter().all(|a| a.status == AckStatus::Accepted as i32),
        "{acks:?}"
    );
    wait_until(Duration::from_secs(60), "good flows stored", || {
        (stored_flows(stack) == 7).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stored_flows(stack), 7, "refused uploads wrote something");
    assert_eq!(
        stack.query("SELECT DISTINCT sensor_id, vessel, batch_seq FROM tidewatch.flows ORDER BY batch_seq").unwrap(),
        "good\tmv-ok\t2\ngood\tmv-ok\t3\n"
    );
}

#[test]
fn bad_input_is_refused_and_ingest_keeps_serving() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s = pki.sensor("s1", "mv-bad");
    let port = free_port();
    let mut ingest = stack.ingest(pki, port, &["--max-batch-bytes", "20000"]);
    let _sink = stack.sink("sink", &[]);
    let ca = pki.dir.join("ca.pem");

    // Garbage on the port (not TLS at all).
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02 garbage")
        .unwrap();
    drop(tcp);
    ingest.wait_log("TLS handshake refused", Duration::from_secs(10));

    let garbage = UploadRequest {
        seq: 1,
        encoding: Encoding::Protobuf as i32,
        payload: vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x08],
    };
    let bad_zstd = UploadRequest {
        seq: 2,
        encoding: Encoding::ProtobufZstd as i32,
        payload: b"not zstd at all".to_vec(),
    };
    let mut mismatched = request(3, 2, "");
    mismatched.seq = 33;
    let empty = request(4, 0, "");
    let too_large = request(5, 400, ""); // ~ 25 KB > 20000
    assert!(too_large.payload.len() > 20_000);
    let ok = request(6, 5, "");
    let acks = upload(
        port,
        &ca,
        Some(ClientCert::of(&s)),
        vec![garbage, bad_zstd, mismatched, empty, too_large, ok],
    )
    .unwrap();
    let got: Vec<(u64, i32, bool)> = acks
        .iter()
        .map(|a| (a.seq, a.status, a.retryable))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, AckStatus::Malformed as i32, false),
            (2, AckStatus::Malformed as i32, false),
            (33, AckStatus::Malformed as i32, false),
            (4, AckStatus::Empty as i32, false),
            (5, AckStatus::TooLarge as i32, false),
            (6, AckStatus::Accepted as i32, false),
        ],
        "{acks:#?}"
    );
    for a in &acks[..5] {
        assert!(!a.detail.is_empty(), "refusal without a reason: {a:?}");
    }
    let log = ingest.log_text();
    for reason in [
        "bad_protobuf",
        "bad_compression",
        "seq_mismatch",
        "empty",
        "too_large",
    ] {
        assert!(
            log.contains(&format!("reason={reason}")),
            "no log line for {reason}:\n{log}"
        );
    }

    // A message far beyond the gRPC limit ends the stream with a gRPC error.
    let huge = request(7, 2000, "");
    let r = upload(port, &ca, Some(ClientCert::of(&s)), vec![huge]);
    let e = r.expect_err("oversized gRPC message accepted");
    assert!(
        e.contains("ResourceExhausted") || e.contains("too large") || e.contains("message length"),
        "{e}"
    );

    // And ingest still serves: a normal batch after all of that.
    let acks = upload(port, &ca, Some(ClientCert::of(&s)), vec![request(8, 3, "")]).unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32);
    wait_until(Duration::from_secs(60), "accepted flows stored", || {
        (stored_flows(stack) == 8).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stored_flows(stack), 8);
    assert!(ingest.try_wait().is_none(), "ingest exited");
}
