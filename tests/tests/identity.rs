//! Fleet identity over a sensor's lifetime, against the real collector,
//! broker and ClickHouse: only sensor certificates are sensors, keys born on
//! the sensor, renewal over the link, revocation that closes open streams,
//! and envelopes the sink takes only from ingest.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prost::Message;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message as _};
use tidewatch_collector::envelope::{self, SigningKey, SIGNATURE_HEADER};
use tidewatch_proto::v1::signer_client::SignerClient;
use tidewatch_proto::v1::uplink_client::UplinkClient;
use tidewatch_proto::v1::{AckStatus, IngestedBatch, RenewRequest, SignRenewalRequest};
use tidewatch_tests::grpc::{channel, flow_totals, request, upload, ClientCert};
use tidewatch_tests::linkemu::LinkEmu;
use tidewatch_tests::*;

/// A certificate signed by `pki`'s CA with exactly the given SAN URIs and
/// extended key usage (`None`: no EKU extension at all), as anyone holding
/// the CA key could make: for what ingest must refuse.
fn signed_by_ca(
    pki: &Pki,
    name: &str,
    uris: &[&str],
    eku: Option<ExtendedKeyUsagePurpose>,
) -> SensorCert {
    let ca_pem = std::fs::read_to_string(pki.dir.join("ca.pem")).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(pki.dir.join("ca-key.pem")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, "mv-legacy");
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
        .collect();
    p.extended_key_usages = eku.into_iter().collect();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(1);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    let dir = pki.dir.join("made-by-hand");
    std::fs::create_dir_all(&dir).unwrap();
    let c = SensorCert {
        ca: pki.dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&c.cert, cert.pem()).unwrap();
    std::fs::write(&c.key, key.serialize_pem()).unwrap();
    c
}

/// A CSR (DER) for a fresh key.
fn new_csr() -> Vec<u8> {
    let k = KeyPair::generate().unwrap();
    CertificateParams::default()
        .serialize_request(&k)
        .unwrap()
        .der()
        .to_vec()
}

/// Makes one gRPC call over mTLS to 127.0.0.1:`port` as `cert`; a failure
/// as "Code: message".
fn call<T, F, Fut>(port: u16, cert: &SensorCert, f: F) -> Result<T, String>
where
    F: FnOnce(tonic::transport::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = channel(port, &cert.ca, Some(ClientCert::of(cert))).await?;
        f(ch)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })
}

/// Stored flows of one sensor.
fn stored(stack: &Stack, sensor: &str) -> u64 {
    stack.query_u64(&format!(
        "SELECT count() FROM tidewatch.flows WHERE sensor_id = '{sensor}'"
    ))
}

#[test]
fn only_sensor_certificates_are_sensors_and_the_server_may_have_its_own_ca() {
    let shore = Shore::builder().sink(&[]).start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    // The server's certificate comes from a CA of its own; the sensors
    // trust that one (their --ca), ingest trusts the sensor CA.
    let server = Pki::with_ca_name(stack.path().join("server-pki"), "tidewatch server CA");
    let port = free_port();
    let separate = || IngestTls {
        server: &server,
        sensors: pki,
        crl: true,
    };
    let mut ingest = stack.ingest_with(separate(), port, &[]);
    let server_ca = server.dir.join("ca.pem");

    let good = pki.enroll("good", "mv-ok", &stack.path().join("good"), &[]);
    let acks = upload(
        port,
        &server_ca,
        Some(ClientCert::of(&good)),
        vec![request(1, 2, "")],
    )
    .unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32, "{acks:?}");
    // The sensor CA does not vouch for the server: a sensor trusting it
    // alone cannot connect.
    assert!(upload(
        port,
        &good.ca,
        Some(ClientCert::of(&good)),
        vec![request(2, 1, "")]
    )
    .is_err());

    // Certificates the fleet CA signed that are not sensor certificates.
    let client = Some(ExtendedKeyUsagePurpose::ClientAuth);
    let refused = [
        (
            signed_by_ca(pki, "no-uri", &[], client.clone()),
            "no_sensor_uri",
        ),
        (
            signed_by_ca(
                pki,
                "two-uris",
                &["urn:tidewatch:sensor:a", "urn:tidewatch:sensor:b"],
                client.clone(),
            ),
            "many_sensor_uris",
        ),
        (
            signed_by_ca(pki, "no-eku", &["urn:tidewatch:sensor:c"], None),
            "no_client_auth_eku",
        ),
    ];
    pki.run(&["issue-ingest", "--name", "ingest-0"]);
    let ingest_cert = SensorCert {
        ca: pki.dir.join("ca.pem"),
        cert: pki.dir.join("ingest/ingest-0.pem"),
        key: pki.dir.join("ingest/ingest-0-key.pem"),
    };
    let mut seen = Vec::new();
    for (cert, reason) in refused
        .iter()
        .chain([(ingest_cert, "no_sensor_uri")].iter())
    {
        let r = upload(
            port,
            &server_ca,
            Some(ClientCert::of(cert)),
            vec![request(1, 5, "")],
        );
        assert!(
            r.is_err(),
            "{} accepted as a sensor: {r:?}",
            cert.cert.display()
        );
        ingest.wait_log(&format!("reason={reason}"), Duration::from_secs(10));
        seen.push(reason.to_string());
    }
    // One clear line per refusal (a client may try twice): the reason and
    // what is wrong with the certificate.
    let log = ingest.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("client certificate refused"))
        .collect();
    assert!(lines.len() >= 4, "{log}");
    for l in &lines {
        assert!(
            l.contains(" reason=") && l.contains("not a sensor certificate")
                || l.contains("exactly one"),
            "{l}"
        );
        eprintln!("ingest: {l}");
    }
    // A sensor certificate from the server's CA is not from the fleet CA.
    let stray = server.sensor("stray", "mv-ok");
    let r = upload(
        port,
        &server_ca,
        Some(ClientCert::of(&stray)),
        vec![request(1, 5, "")],
    );
    assert!(r.is_err(), "certificate of the server CA accepted: {r:?}");
    ingest.wait_log("UnknownIssuer", Duration::from_secs(10));

    // Certificates from before the URI convention (identity in CN and OU)
    // pass only where the operator allows them.
    let legacy = signed_by_ca(pki, "old-crane", &[], client);
    let legacy_port = free_port();
    let _legacy_ingest =
        stack.ingest_with(separate(), legacy_port, &["--allow-legacy-cn-identity"]);
    let acks = upload(
        legacy_port,
        &server_ca,
        Some(ClientCert::of(&legacy)),
        vec![request(1, 3, "")],
    )
    .unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32, "{acks:?}");

    expect_flows(
        stack,
        &BTreeMap::from([
            ("good".to_string(), flow_totals(2)),
            ("old-crane".to_string(), flow_totals(3)),
        ]),
    );
    assert_eq!(
        stack
            .query("SELECT DISTINCT sensor_id, vessel FROM tidewatch.flows ORDER BY sensor_id")
            .unwrap(),
        "good\tmv-ok\nold-crane\tmv-legacy\n"
    );
}

#[test]
fn a_sensor_with_its_own_key_renews_twice_over_the_link_while_uploading() {
    let shore = Shore::builder().sink(&[]).start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    // Certificates live 16 s; the sensor renews with half of that left.
    let signer_port = free_port();
    let mut signer = pki.signer(signer_port, 16, stack.path());
    let port = free_port();
    let mut extra = pki.signer_args(signer_port);
    // Connections also age out (drained, the sensor reconnects). A renewal
    // comes about 7 s into each connection, so an age of 4 s (±10 %) drains
    // every connection that has not switched to a new certificate by then:
    // at 7 s the jitter decided whether any drain happened at all.
    extra.extend(["--max-connection-age-secs", "4", "--drain-grace-secs", "5"].map(String::from));
    let ingest = stack.ingest(
        pki,
        port,
        &extra.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let link = LinkEmu::start(port);
    link.latency(20);

    let box_dir = stack.path().join("sensor-box");
    let s1 = pki.enroll("s1", "mv-renew", &box_dir, &["--lifetime-secs", "16"]);
    let enrolled = std::fs::read(&s1.cert).unwrap();
    let pcap = paced_capture(&stack.path().join("paced.pcap"), 36, 1_700_000_000);
    let want = totals(&read_flows_with(&pcap, &["--idle-timeout", "0.5"]));
    let state = box_dir.join("state");
    let mut s = SensorRun::new(&s1, link.port, &pcap, &state)
        .args(PACED_RUN)
        .args(&["--renew-fraction", "0.5"])
        .spawn("sensor", stack.path());
    assert!(
        s.wait(Duration::from_secs(150)).success(),
        "{}",
        s.log_text()
    );
    let log = s.log_text();
    let renewed = log.matches("certificate renewed; switching").count();
    assert!(renewed >= 2, "renewed {renewed} time(s):\n{log}");
    assert_eq!(log.matches("sensor certificate loaded").count(), 1);
    assert!(
        ingest
            .log_text()
            .matches("sensor certificate renewed")
            .count()
            >= 2
            && signer
                .log_text()
                .matches("sensor certificate renewed")
                .count()
                >= 2
    );
    let drains = ingest.log_text().matches("connection drained").count();
    assert!(drains >= 2, "{drains} connection(s) drained for age");

    // Every flow exactly once, and no batch written twice to Kafka: the
    // switches to new certificates (and the drains) resent nothing that
    // had reached Kafka.
    expect_flows(stack, &BTreeMap::from([("s1".to_string(), want)]));
    assert_eq!(
        stack.kafka_records(tidewatch_proto::BATCHES_TOPIC) as u64,
        batches_acked(&log),
        "a batch reached Kafka twice"
    );

    // The renewed key and certificate are saved together, private; the
    // enrolled files are untouched and the renewed certificate is the
    // same sensor's.
    let renewed_pem = state.join("identity/renewed.pem");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&renewed_pem)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read(&s1.cert).unwrap(), enrolled);
    let id =
        tidewatch_collector::identity::identity_from_pem(&std::fs::read(&renewed_pem).unwrap())
            .unwrap();
    assert_eq!(
        (id.sensor_id.as_str(), id.vessel.as_str()),
        ("s1", "mv-renew")
    );
    let first = tidewatch_collector::identity::identity_from_pem(&enrolled).unwrap();
    assert!(id.not_after > first.not_after);

    // Only ingest reaches the signer: a (valid) sensor certificate is
    // refused.
    let s3 = pki.sensor("s3", "mv-renew");
    let csr = new_csr();
    let status = call(signer_port, &s3, |ch| async move {
        let req = SignRenewalRequest {
            presented_certificate: Vec::new(),
            csr,
        };
        SignerClient::new(ch).sign_renewal(req).await
    });
    let e = status.expect_err("a sensor got a certificate from the signer directly");
    assert!(
        e.contains("PermissionDenied") && e.contains("only ingest"),
        "{e}"
    );
    signer.wait_log("the caller is not an ingest", Duration::from_secs(5));

    // A revoked sensor cannot renew (even where ingest's CRL lags: the
    // signer checks its own index), and needs re-enrollment.
    let s2 = pki.enroll("s2", "mv-renew", &stack.path().join("box2"), &[]);
    let no_crl_port = free_port();
    let tls = IngestTls {
        server: pki,
        sensors: pki,
        crl: false,
    };
    let signer_args = pki.signer_args(signer_port);
    let signer_args: Vec<&str> = signer_args.iter().map(String::as_str).collect();
    let mut no_crl = stack.ingest_with(tls, no_crl_port, &signer_args);
    pki.run(&["revoke", "--id", "s2"]);
    let status = call(no_crl_port, &s2, |ch| async move {
        UplinkClient::new(ch)
            .renew(RenewRequest { csr: new_csr() })
            .await
    });
    let e = status.expect_err("a revoked sensor renewed");
    assert!(
        e.contains("PermissionDenied") && e.contains("revoked"),
        "{e}"
    );
    no_crl.wait_log("renewal refused by the signer", Duration::from_secs(5));

    // Hostile renewals from a valid sensor: an oversized CSR is refused by
    // ingest without reaching the signer, a garbage one by the signer; both
    // clearly, and ingest keeps serving.
    for (csr, want) in [
        (vec![0x30; 17 * 1024], "InvalidArgument: CSR of 17408 bytes"),
        (
            b"\x30\x03\x02\x01\x00 not a CSR".to_vec(),
            "InvalidArgument",
        ),
    ] {
        let e = call(port, &s3, |ch| async move {
            UplinkClient::new(ch).renew(RenewRequest { csr }).await
        })
        .expect_err("a hostile CSR was signed");
        assert!(e.contains(want), "{e}");
    }
    let acks = upload(
        port,
        &s3.ca,
        Some(ClientCert::of(&s3)),
        vec![request(1, 2, "")],
    )
    .unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32);
}

#[test]
fn revoking_a_sensor_ends_its_open_stream_within_seconds_and_loses_nothing() {
    let shore = Shore::builder().sink(&[]).start();
    let (stack, pki) = (&shore.stack, &shore.pki);
    let port = free_port();
    let mut ingest = stack.ingest(pki, port, &["--tls-reload-secs", "1"]);
    let box_dir = stack.path().join("sensor-box");
    let s1 = pki.enroll("s1", "mv-revoked", &box_dir, &[]);
    let pcap = paced_capture(&stack.path().join("paced.pcap"), 20, 1_700_000_000);
    let want = totals(&read_flows_with(&pcap, &["--idle-timeout", "0.5"]));
    let state = box_dir.join("state");
    let mut s = SensorRun::new(&s1, port, &pcap, &state)
        .args(PACED_RUN)
        .spawn("sensor", stack.path());
    wait_until(Duration::from_secs(60), "some flows stored", || {
        (stored(stack, "s1") >= 300).then_some(())
    });

    let revoked_at = Instant::now();
    pki.run(&["revoke", "--id", "s1"]);
    ingest.wait_log(
        "certificate revoked: its open connection is closed",
        Duration::from_secs(5),
    );
    eprintln!(
        "stream closed {:?} after the revocation",
        revoked_at.elapsed()
    );
    // Its next connection is refused.
    ingest.wait_log("TLS handshake refused", Duration::from_secs(15));
    assert!(
        ingest.log_text().contains("Revoked"),
        "{}",
        ingest.log_text()
    );

    // Nothing it sends from then on is stored: the count settles (what
    // reached Kafka before the close) and stays, while the sensor meters
    // the rest of its capture into its disk buffer.
    std::thread::sleep(Duration::from_secs(3));
    let settled = stored(stack, "s1");
    s.wait_log("metering done", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        stored(stack, "s1"),
        settled,
        "flows stored after the revocation"
    );
    assert!(
        settled < want.flows,
        "the revocation came after the whole upload"
    );
    assert!(s.terminate().is_some());

    // Re-enrolled (a new key and certificate), it delivers what waited on
    // disk: every flow exactly once.
    let again = pki.enroll("s1", "mv-revoked", &stack.path().join("re-enrolled"), &[]);
    deliver_buffered(&again, port, &state, "sensor-again", stack.path());
    expect_flows(stack, &BTreeMap::from([("s1".to_string(), want)]));
}

#[test]
fn a_batch_written_to_kafka_around_ingest_is_dead_lettered_and_never_stored() {
    let shore = Shore::start();
    let (stack, pki, port) = (&shore.stack, &shore.pki, shore.port);
    let honest = pki.sensor("honest", "mv-ok");
    let acks = upload(
        port,
        &honest.ca,
        Some(ClientCert::of(&honest)),
        vec![request(1, 3, "")],
    )
    .unwrap();
    assert_eq!(acks[0].status, AckStatus::Accepted as i32);
    expect_flows(
        stack,
        &BTreeMap::from([("honest".to_string(), flow_totals(3))]),
    );

    // What ingest wrote: the envelope and its signature.
    let records = stack.topic_records(tidewatch_proto::BATCHES_TOPIC);
    assert_eq!(records.len(), 1);
    let value = records[0].payload().unwrap().to_vec();
    let sig = tidewatch_collector::envelope::signature_of(&records[0]).expect("ingest's signature");
    let env = IngestedBatch::decode(&value[..]).unwrap();
    let under = |sensor: &str, seq: u64| {
        IngestedBatch {
            sensor_id: sensor.into(),
            seq,
            ..env.clone()
        }
        .encode_to_vec()
    };
    let rogue_dir = stack.path().join("rogue");
    let (rogue_key, _) = envelope::generate(&rogue_dir).unwrap();
    let rogue = SigningKey::load(&rogue_key).unwrap();
    let forged = [
        // Unsigned, under the honest sensor's name, a seq never used.
        (under("honest", 50), None),
        // Signed with a key of the forger's own.
        (under("honest", 51), Some(rogue.sign(&under("honest", 51)))),
        // Ingest's signature moved onto another sensor's envelope.
        (under("victim", 1), Some(sig.clone())),
        // Ingest's own record, copied as it is: a duplicate, skipped.
        (value.clone(), Some(sig)),
    ];
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", stack.kafka_brokers())
        .create()
        .unwrap();
    for (v, s) in &forged {
        let mut r = BaseRecord::<[u8], [u8]>::to(tidewatch_proto::BATCHES_TOPIC)
            .key(b"honest")
            .payload(v);
        if let Some(s) = s {
            r = r.headers(OwnedHeaders::new().insert(Header {
                key: SIGNATURE_HEADER,
                value: Some(s.as_slice()),
            }));
        }
        p.send(r).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();

    let letters = wait_until(Duration::from_secs(60), "three dead letters", || {
        let out = run_ok(stack.collector().args(["deadletter", "list"]));
        out.contains("3 letter(s)").then_some(out)
    });
    for (sensor, reason) in [
        ("honest", "envelope refused: unsigned envelope"),
        (
            "honest",
            "envelope refused: envelope signed with unknown key",
        ),
        (
            "victim",
            "envelope refused: envelope signature does not match its content",
        ),
    ] {
        assert!(
            letters
                .lines()
                .any(|l| l.contains(&format!("\t{sensor}\t")) && l.contains(reason)),
            "no letter for {sensor} with {reason:?}:\n{letters}"
        );
    }
    // Replaying them changes nothing: they stay refused.
    run_ok(stack.collector().args(["deadletter", "replay"]));
    wait_until(Duration::from_secs(60), "the replays refused again", || {
        run_ok(stack.collector().args(["deadletter", "list"]))
            .contains("6 letter(s)")
            .then_some(())
    });
    expect_flows(
        stack,
        &BTreeMap::from([("honest".to_string(), flow_totals(3))]),
    );
    assert_eq!(
        stack.query_u64(
            "SELECT count() FROM tidewatch.batches WHERE sensor_id != 'honest' OR seq != 1"
        ),
        0
    );
}
