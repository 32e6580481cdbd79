//! Operational behaviour: the standard gRPC health service, and the sink's
//! dead-letter path for records it cannot decode.

use std::time::Duration;

use prost::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message as _};
use tidewatch_collector::envelope::{SigningKey, SIGNATURE_HEADER};
use tidewatch_proto::v1::{AckStatus, DeadLetter, Encoding, IngestedBatch};
use tidewatch_tests::grpc::{channel, request, upload, ClientCert};
use tidewatch_tests::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn health(port: u16, c: &SensorCert, service: &str) -> Result<i32, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = ClientCert::of(c);
        let ch = channel(port, &c.ca, Some(client)).await?;
        HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|s| s.to_string())
    })
}

/// The health service on the plaintext probe port (what a kubelet's gRPC
/// probe reaches: no TLS, no client certificate).
fn plain_health(port: u16, service: &str) -> Result<i32, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|s| s.to_string())
    })
}

/// Opens an upload stream, sends `req` and keeps its request side open (a
/// sensor with more to send) until the collector ends the stream; returns
/// the acks and how it ended.
fn upload_keeping_open(
    port: u16,
    cert: &SensorCert,
    req: tidewatch_proto::v1::UploadRequest,
) -> (
    Vec<tidewatch_proto::v1::UploadAck>,
    Result<(), tonic::Status>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = ClientCert::of(cert);
        let ch = channel(port, &cert.ca, Some(client)).await.unwrap();
        let mut c = tidewatch_proto::v1::uplink_client::UplinkClient::new(ch);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(req).await.unwrap();
        let mut inbound = c
            .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut acks = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(60), inbound.message()).await {
                Err(_) => panic!("the stream did not end within 60 s ({acks:?})"),
                Ok(Ok(Some(a))) => acks.push(a),
                Ok(Ok(None)) => return (acks, Ok(())),
                Ok(Err(s)) => return (acks, Err(s)),
            }
        }
    })
}

/// Tries an upload over plaintext; returns the gRPC status code.
fn plain_upload(port: u16) -> tonic::Code {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = tidewatch_proto::v1::uplink_client::UplinkClient::new(ch);
        let reqs = tokio_stream::iter(vec![request(1, 1, "")]);
        match c.upload(reqs).await {
            Ok(mut r) => match r.get_mut().message().await {
                Ok(m) => panic!("upload answered over plaintext: {m:?}"),
                Err(s) => s.code(),
            },
            Err(s) => s.code(),
        }
    })
}

#[test]
fn health_service_answers_and_bad_records_go_to_the_dead_letter_topic() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-ops");
    let port = free_port();
    let hport = free_port();
    let _ingest = stack.ingest(
        pki,
        port,
        &["--health-listen", &format!("127.0.0.1:{hport}")],
    );
    let mut sink = stack.sink("sink", &[]);

    // Probe port: plaintext health, nothing else.
    assert_eq!(plain_health(hport, ""), Ok(ServingStatus::Serving as i32));
    assert_eq!(
        plain_health(hport, "tidewatch.v1.Uplink"),
        Ok(ServingStatus::Serving as i32)
    );
    // The upload service is not served there: uploads need mTLS.
    assert_eq!(plain_upload(hport), tonic::Code::Unimplemented);

    assert_eq!(
        health(port, &s1, "tidewatch.v1.Uplink"),
        Ok(ServingStatus::Serving as i32)
    );
    assert_eq!(health(port, &s1, ""), Ok(ServingStatus::Serving as i32));
    assert!(health(port, &s1, "no.such.Service").is_err());

    // Two records nobody could decode, on the partition of sensor s1 (same
    // key), ahead of a good batch from s1.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", stack.kafka_brokers())
        .create()
        .unwrap();
    let bad_envelope = IngestedBatch {
        sensor_id: "s1".into(),
        vessel: "mv-ops".into(),
        seq: 99,
        received_us: 1,
        encoding: Encoding::ProtobufZstd as i32,
        payload: b"not zstd".to_vec(),
        ingest_node: "test".into(),
    }
    .encode_to_vec();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Signed with ingest's key (as if ingest had written them), so that
    // what is checked here is the decoding, not the signature.
    let key = SigningKey::load(&stack.envelope_keys().0).unwrap();
    rt.block_on(async {
        for value in [b"\xff\xfe garbage".to_vec(), bad_envelope] {
            let sig = key.sign(&value);
            producer
                .send(
                    FutureRecord::to("tidewatch.batches.v1")
                        .key("s1")
                        .payload(&value)
                        .headers(OwnedHeaders::new().insert(Header {
                            key: SIGNATURE_HEADER,
                            value: Some(sig.as_slice()),
                        })),
                    Timeout::Never,
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });
    let ca = pki.dir.join("ca.pem");
    let acks = upload(
        port,
        &ca,
        Some(ClientCert::of(&s1)),
        vec![request(1, 4, "")],
    )
    .unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32);

    // The good batch is stored: the bad records did not block the partition.
    wait_until(Duration::from_secs(60), "good flows stored", || {
        (stack.query_u64("SELECT count() FROM tidewatch.flows") == 4).then_some(())
    });
    sink.wait_log(
        "record sent to the dead-letter topic",
        Duration::from_secs(10),
    );

    // Both bad records are in the dead-letter topic with their reasons.
    let letters = wait_until(Duration::from_secs(30), "two dead letters", || {
        let l: Vec<DeadLetter> = stack
            .topic_records("tidewatch.deadletter.v1")
            .iter()
            .map(|m| DeadLetter::decode(m.payload().unwrap()).unwrap())
            .collect();
        (l.len() >= 2).then_some(l)
    });
    assert_eq!(letters.len(), 2, "dead letters: {letters:?}");
    assert!(
        letters[0].reason.contains("not an IngestedBatch"),
        "{:?}",
        letters[0]
    );
    assert_eq!(letters[0].value, b"\xff\xfe garbage");
    assert!(letters[1].reason.contains("zstd"), "{:?}", letters[1]);
    assert_eq!(letters[1].key, b"s1");
    assert_eq!(letters[0].topic, "tidewatch.batches.v1");
}

#[test]
fn fleet_registry_loads_with_migrate_reloads_and_refuses_bad_files() {
    let stack = Stack::start();
    let dir = stack.path().join("fleet");
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = dir.join("v1.json");
    std::fs::write(
        &v1,
        r#"{"sensors": [
            {"id": "crane-a", "vessel": "port-of-kiel", "site": "kiel", "role": "crane"},
            {"id": "bridge-b", "vessel": "mv-aurora", "imo": "9321483", "role": "bridge"}]}"#,
    )
    .unwrap();
    let out = run_ok(
        stack
            .collector()
            .arg("migrate")
            .arg("--fleet-registry")
            .arg(&v1),
    );
    assert!(out.contains("fleet registry loaded"), "{out}");
    let show = run_ok(
        stack
            .collector()
            .args(["registry", "show", "--format", "csv"]),
    );
    assert!(
        show.contains("bridge-b,mv-aurora,9321483,,bridge,[],[],[],[],1,")
            && show.contains("crane-a,port-of-kiel,,kiel,crane,[],[],[],[],1,"),
        "{show}"
    );

    // A bad file is refused whole, with the reason; nothing changes.
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"sensors": [{"id": "crane-a", "vessel": "port-of-kiel"},
                        {"id": "eng-c", "vessel": "mv-aurora", "imo": "9321484"}]}"#,
    )
    .unwrap();
    let out = stack
        .collector()
        .args(["registry", "load"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("entry 1 (sensor \"eng-c\")") && err.contains("check digit"),
        "{err}"
    );
    assert_eq!(
        stack.query_u64("SELECT count() FROM tidewatch.fleet_registry WHERE active = 1"),
        2
    );

    // A new version: bridge-b moved to another role, crane-a left the fleet.
    let v2 = dir.join("v2.json");
    std::fs::write(
        &v2,
        r#"{"sensors": [{"id": "bridge-b", "vessel": "mv-aurora", "imo": "9321483", "role": "engine"}]}"#,
    )
    .unwrap();
    let out = run_ok(stack.collector().args(["registry", "load"]).arg(&v2));
    assert!(out.contains("no longer listed: crane-a"), "{out}");
    let active = stack
        .query("SELECT sensor_id, role FROM tidewatch.fleet_registry WHERE active = 1 ORDER BY sensor_id")
        .unwrap();
    assert_eq!(active, "bridge-b\tengine\n");
    let all = run_ok(
        stack
            .collector()
            .args(["registry", "show", "--all", "--format", "json"]),
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&all).unwrap();
    assert_eq!(rows.len(), 2, "{all}");
    assert!(
        rows.iter().any(|r| r["sensor_id"] == "crane-a"
            && r["active"] == 0
            && r["vessel"] == "port-of-kiel"),
        "{all}"
    );
}

/// Ingest's SIGTERM drain, step by step: with a batch in flight (waiting for
/// a Kafka that is down), the health service turns NOT_SERVING at once, the
/// batch in flight is answered, then the stream ends with UNAVAILABLE and
/// the process exits cleanly.
#[test]
fn ingest_drain_turns_not_serving_answers_in_flight_batches_then_ends_streams() {
    let shore = Shore::builder().start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let s1 = pki.sensor("s1", "mv-drain");
    let (port, hport) = (free_port(), free_port());
    let mut ingest = stack.ingest(
        pki,
        port,
        &[
            "--health-listen",
            &format!("127.0.0.1:{hport}"),
            "--kafka-timeout-ms",
            "6000",
        ],
    );
    assert_eq!(
        plain_health(hport, "tidewatch.v1.Uplink"),
        Ok(ServingStatus::Serving as i32)
    );
    stack.stop_kafka();
    let cert = s1.clone();
    let upload = std::thread::spawn(move || upload_keeping_open(port, &cert, request(1, 5, "")));
    ingest.wait_log("upload stream opened", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500)); // the batch reaches the producer
    let term = std::process::Command::new("kill")
        .args(["-TERM", &ingest.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // NOT_SERVING while the batch is still waiting for Kafka.
    wait_until(
        Duration::from_secs(4),
        "NOT_SERVING during the drain",
        || {
            (plain_health(hport, "tidewatch.v1.Uplink") == Ok(ServingStatus::NotServing as i32))
                .then_some(())
        },
    );
    assert!(
        ingest.try_wait().is_none(),
        "ingest exited before answering the batch in flight"
    );
    // The batch in flight is answered (Kafka is down: a retryable refusal),
    // then the stream ends with UNAVAILABLE.
    let (acks, end) = upload.join().unwrap();
    assert_eq!(
        acks.len(),
        1,
        "the batch in flight was not answered: {end:?}"
    );
    assert_eq!(acks[0].status, AckStatus::Unavailable as i32, "{acks:?}");
    let end = end.expect_err("the stream ended without a status");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end}");
    assert!(end.message().contains("shutting down"), "{end}");
    let st = ingest.wait(Duration::from_secs(30));
    assert!(st.success(), "ingest exit {st}:\n{}", ingest.log_text());
    stack.start_kafka();
}
