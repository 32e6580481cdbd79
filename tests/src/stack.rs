//! The local stack (ClickHouse and the broker, started through the
//! project's own `deploy/local/stack.sh`) and the collector processes on it;
//! [`Shore`] is the usual starting point of an end-to-end test: a stack
//! with its schema, a fleet PKI, ingest and a sink.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::http::http_post;
use crate::pki::Pki;
use crate::process::{bin, free_port, root, run_ok, Proc};

/// One local stack (ClickHouse + broker) with its own ports and data.
pub struct Stack {
    pub dir: tempfile::TempDir,
    /// ClickHouse (node 1 of a cluster).
    pub ch_http_port: u16,
    pub kafka_port: u16,
    /// Set for a stack started with [`Stack::start_cluster`].
    pub cluster: Option<Cluster>,
}

/// The ClickHouse cluster of a stack: 2 shards × 2 replicas and ZooKeeper
/// (`stack.sh start-cluster`).
pub struct Cluster {
    /// Its name in the nodes' `remote_servers`.
    pub name: String,
    /// HTTP port of node N at index N - 1; nodes 1 and 2 are shard 1's
    /// replicas, nodes 3 and 4 shard 2's.
    pub http_ports: Vec<u16>,
}

impl Stack {
    /// A single ClickHouse server and the broker.
    pub fn start() -> Stack {
        Stack::start_with("start", |c| {
            c.env("CH_HTTP_PORT", free_port().to_string())
                .env("CH_TCP_PORT", free_port().to_string())
                .env("KAFKA_PORT", free_port().to_string());
        })
    }

    /// ZooKeeper, four ClickHouse servers as 2 shards × 2 replicas, and the
    /// broker with 6 partitions.
    pub fn start_cluster() -> Stack {
        Stack::start_with("start-cluster", |_| {})
    }

    fn start_with(how: &str, ports: impl FnOnce(&mut Command)) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("tidewatch-test-")
            .tempdir()
            .expect("temp dir");
        let stack_dir = dir.path().join("stack");
        let mut cmd = Command::new(root().join("deploy/local/stack.sh"));
        cmd.arg(how).arg(&stack_dir);
        ports(&mut cmd);
        run_ok(&mut cmd);
        let env = fs::read_to_string(stack_dir.join("stack.env")).expect("stack.env");
        let value = |k: &str| -> Option<&str> {
            env.lines().find_map(|l| l.strip_prefix(&format!("{k}=")))
        };
        let get = |k: &str| -> u16 {
            value(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} missing in stack.env"))
        };
        let cluster = value("CLUSTER").map(|name| Cluster {
            name: name.to_string(),
            http_ports: (1..=4).map(|n| get(&format!("CH_HTTP_PORT_{n}"))).collect(),
        });
        // Ingest signs envelopes with this pair's private key, the sinks
        // check them with its public key.
        run_ok(
            Command::new(bin("tidewatch-collector"))
                .args(["envelope-key", "--out-dir"])
                .arg(dir.path().join("envelope")),
        );
        Stack {
            ch_http_port: get("CH_HTTP_PORT"),
            kafka_port: get("KAFKA_PORT"),
            cluster,
            dir,
        }
    }

    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("not a cluster stack")
    }

    /// SIGKILL one ClickHouse node of the cluster (1-based), as a crash.
    pub fn kill_node(&self, n: usize) {
        self.stack_cmd("kill-node", &[&n.to_string()]);
    }
    /// Starts a node again, same ports and data.
    pub fn start_node(&self, n: usize) {
        self.stack_cmd("start-node", &[&n.to_string()]);
    }
    /// SIGKILL ZooKeeper, as a crash.
    pub fn kill_zookeeper(&self) {
        self.stack_cmd("kill-zookeeper", &[]);
    }
    pub fn start_zookeeper(&self) {
        self.stack_cmd("start-zookeeper", &[]);
    }

    /// A query on node `n` of the cluster (1-based; TabSeparated result).
    pub fn node_query(&self, n: usize, sql: &str) -> Result<String, String> {
        http_post(self.cluster().http_ports[n - 1], "/", sql)
    }

    /// Ingest's envelope signing key and the sinks' verify key.
    pub fn envelope_keys(&self) -> (PathBuf, PathBuf) {
        let d = self.path().join("envelope");
        (
            d.join("envelope-signing-key.pem"),
            d.join("envelope-verify-key.pem"),
        )
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `stack.sh WHAT DIR ARGS...` on this stack.
    fn stack_cmd(&self, what: &str, args: &[&str]) {
        run_ok(
            Command::new(root().join("deploy/local/stack.sh"))
                .arg(what)
                .arg(self.dir.path().join("stack"))
                .args(args),
        );
    }

    pub fn stop_clickhouse(&self) {
        self.stack_cmd("stop-clickhouse", &[]);
    }
    pub fn start_clickhouse(&self) {
        self.stack_cmd("start-clickhouse", &[]);
    }
    pub fn stop_kafka(&self) {
        self.stack_cmd("stop-kafka", &[]);
    }
    pub fn start_kafka(&self) {
        self.stack_cmd("start-kafka", &[]);
    }
    /// SIGKILL, as a crash would.
    pub fn kill_kafka(&self) {
        self.stack_cmd("kill-kafka", &[]);
    }
    /// SIGKILL, as a crash would.
    pub fn kill_clickhouse(&self) {
        self.stack_cmd("kill-clickhouse", &[]);
    }

    pub fn clickhouse_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ch_http_port)
    }
    pub fn kafka_brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    /// Every record of `topic` up to its end now, from the start of each
    /// partition (partition by partition, in offset order).
    pub fn topic_records(&self, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.kafka_brokers())
            .set(
                "group.id",
                format!("tidewatch-test-reader-{}", std::process::id()),
            )
            .create()
            .expect("Kafka reader");
        let t = Duration::from_secs(10);
        let md = c.fetch_metadata(Some(topic), t).expect("topic metadata");
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
        let end = self.kafka_records(topic);
        c.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while (out.len() as i64) < end {
            assert!(
                std::time::Instant::now() < deadline,
                "read {} of the {end} records of {topic}",
                out.len()
            );
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                out.push(m.detach());
            }
        }
        out.sort_by_key(|m| (m.partition(), m.offset()));
        out
    }

    /// Records in `topic`: its high watermarks summed over its partitions.
    pub fn kafka_records(&self, topic: &str) -> i64 {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.kafka_brokers())
            .create()
            .expect("Kafka client");
        let t = Duration::from_secs(10);
        let md = c.fetch_metadata(Some(topic), t).expect("topic metadata");
        md.topics()[0]
            .partitions()
            .iter()
            .map(|p| c.fetch_watermarks(topic, p.id(), t).expect("watermarks").1)
            .sum()
    }

    /// Environment for collector commands talking to this stack (its
    /// ClickHouse and cluster, its broker, its envelope keys).
    pub fn collector(&self) -> Command {
        let mut c = Command::new(bin("tidewatch-collector"));
        let (sign, verify) = self.envelope_keys();
        c.env("TIDEWATCH_CLICKHOUSE_URL", self.clickhouse_url())
            .env("TIDEWATCH_KAFKA_BROKERS", self.kafka_brokers())
            .env("TIDEWATCH_ENVELOPE_SIGNING_KEY", sign)
            .env("TIDEWATCH_ENVELOPE_VERIFY_KEYS", verify)
            .env("RUST_LOG", "info,rdkafka=warn");
        if let Some(cluster) = &self.cluster {
            // Every node answers on its own port here, so the collector is
            // told where (its default, each host at node 1's port, would
            // find shard 1 only).
            let nodes: Vec<String> = cluster
                .http_ports
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect();
            c.env("TIDEWATCH_CLICKHOUSE_CLUSTER", &cluster.name)
                .env("TIDEWATCH_CLICKHOUSE_CLUSTER_NODES", nodes.join(","));
        }
        c
    }

    /// Runs `migrate` against this stack (for its cluster, if it has one:
    /// see [`Stack::collector`]).
    pub fn migrate(&self) {
        run_ok(self.collector().arg("migrate"));
    }

    /// Runs a SQL query over ClickHouse's HTTP interface (TabSeparated result).
    pub fn query(&self, sql: &str) -> Result<String, String> {
        http_post(self.ch_http_port, "/", sql)
    }

    /// As [`Stack::query`], with `tidewatch` as the default database (as the
    /// collector's own queries expect).
    pub fn query_tidewatch(&self, sql: &str) -> Result<String, String> {
        http_post(self.ch_http_port, "/?database=tidewatch", sql)
    }

    /// Runs a query returning one number.
    pub fn query_u64(&self, sql: &str) -> u64 {
        let out = self.query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: not a number: {out:?}"))
    }

    /// Starts ingest with the given PKI and returns it once it listens.
    pub fn ingest(&self, pki: &Pki, port: u16, extra: &[&str]) -> Proc {
        let tls = IngestTls {
            server: pki,
            sensors: pki,
            crl: true,
        };
        self.ingest_with(tls, port, extra)
    }

    /// Starts ingest with the TLS material of `tls`.
    pub fn ingest_with(&self, tls: IngestTls<'_>, port: u16, extra: &[&str]) -> Proc {
        let mut cmd = self.collector();
        cmd.arg("ingest")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tls-cert")
            .arg(tls.server.dir.join("server.pem"))
            .arg("--tls-key")
            .arg(tls.server.dir.join("server-key.pem"))
            .arg("--client-ca")
            .arg(tls.sensors.dir.join("ca.pem"));
        if tls.crl {
            cmd.arg("--crl").arg(tls.sensors.dir.join("crl.pem"));
        }
        cmd.args(extra);
        let mut p = Proc::spawn(&format!("ingest-{port}"), self.path(), &mut cmd);
        p.wait_log("ingest listening", Duration::from_secs(90));
        p
    }

    /// Starts a sink with extra arguments.
    pub fn sink(&self, name: &str, extra: &[&str]) -> Proc {
        let mut cmd = self.collector();
        cmd.arg("sink").args(["--max-wait-ms", "300"]).args(extra);
        let mut p = Proc::spawn(name, self.path(), &mut cmd);
        p.wait_log("sink started", Duration::from_secs(90));
        p
    }

    /// Prints the last lines of every process log of this stack (the
    /// collector's, the sensors', the broker's and ClickHouse's errors).
    pub fn dump_logs(&self) {
        let stack = self.path().join("stack");
        let mut logs: Vec<PathBuf> = [self.path().to_path_buf(), stack.join("kafka")]
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.push(stack.join("clickhouse/log/clickhouse-server.err.log"));
        for n in 1..=4 {
            logs.push(stack.join(format!("clickhouse-{n}/log/clickhouse-server.err.log")));
        }
        logs.push(stack.join("zookeeper/zookeeper.log"));
        logs.sort();
        for log in logs {
            let Ok(text) = fs::read_to_string(&log) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!(
                "----- {} (last {} of {} lines)\n{}",
                log.display(),
                tail.len(),
                lines.len(),
                tail.join("\n")
            );
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            // Kept for a closer look (the services are stopped below).
            self.dir.disable_cleanup(true);
            eprintln!("----- test directory kept: {}", self.path().display());
        }
        let _ = Command::new(root().join("deploy/local/stack.sh"))
            .arg("stop")
            .arg(self.dir.path().join("stack"))
            .output();
    }
}

/// Where ingest's TLS material comes from.
pub struct IngestTls<'a> {
    /// The PKI whose `server.pem` ingest presents.
    pub server: &'a Pki,
    /// The PKI whose CA (and CRL) ingest verifies sensors against.
    pub sensors: &'a Pki,
    /// Whether ingest is given that PKI's CRL.
    pub crl: bool,
}

/// A stack with the schema migrated, a fleet PKI (in `DIR/pki`) and,
/// unless left out, ingest on a free port and one sink: where most
/// end-to-end tests start. Fields drop in order: the processes first, the
/// stack last.
pub struct Shore {
    pub ingest: Option<Proc>,
    pub sink: Option<Proc>,
    /// The port ingest listens on (chosen even without ingest).
    pub port: u16,
    pub pki: Pki,
    pub stack: Stack,
}

/// How [`Shore::start`] sets the shore up.
#[derive(Default)]
pub struct ShoreBuilder {
    ingest: Option<Vec<String>>,
    sink: Option<Vec<String>>,
}

impl Shore {
    /// Schema and PKI; add ingest and a sink with the builder's methods.
    pub fn builder() -> ShoreBuilder {
        ShoreBuilder::default()
    }

    /// Schema, PKI, ingest and a sink with their defaults.
    pub fn start() -> Shore {
        Shore::builder().ingest(&[]).sink(&[]).start()
    }
}

impl ShoreBuilder {
    /// Ingest with extra options.
    pub fn ingest(mut self, extra: &[&str]) -> ShoreBuilder {
        self.ingest = Some(extra.iter().map(|a| a.to_string()).collect());
        self
    }

    /// A sink (named `sink`) with extra options.
    pub fn sink(mut self, extra: &[&str]) -> ShoreBuilder {
        self.sink = Some(extra.iter().map(|a| a.to_string()).collect());
        self
    }

    pub fn start(self) -> Shore {
        let stack = Stack::start();
        stack.migrate();
        let pki = Pki::new(stack.path().join("pki"));
        let port = free_port();
        let ingest = self
            .ingest
            .as_ref()
            .map(|a| stack.ingest(&pki, port, &strs(a)));
        let sink = self.sink.as_ref().map(|a| stack.sink("sink", &strs(a)));
        Shore {
            ingest,
            sink,
            port,
            pki,
            stack,
        }
    }
}

/// Borrowed views of owned arguments.
fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
