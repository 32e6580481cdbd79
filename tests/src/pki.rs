//! A fleet PKI made with the real `tidewatch-collector pki` commands, sensors
//! enrolled with the real `tidewatch-sensor enroll`, and the signer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{bin, run_ok, Proc};

/// A fleet PKI made with `tidewatch-collector pki`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: PathBuf) -> Pki {
        Pki::with_ca_name(dir, "tidewatch fleet CA")
    }

    pub fn with_ca_name(dir: PathBuf, name: &str) -> Pki {
        let p = Pki { dir };
        p.run(&["init-ca", "--name", name]);
        p.run(&["issue-server", "--dns", "localhost", "--ip", "127.0.0.1"]);
        p
    }

    pub fn run(&self, args: &[&str]) -> String {
        run_ok(
            Command::new(bin("tidewatch-collector"))
                .arg("pki")
                .arg("--dir")
                .arg(&self.dir)
                .args(args),
        )
    }

    /// A sensor certificate and key both made ashore (`issue-sensor`, lab use).
    pub fn sensor(&self, id: &str, vessel: &str) -> SensorCert {
        self.run(&["issue-sensor", "--id", id, "--vessel", vessel]);
        self.cert(id)
    }

    pub fn cert(&self, id: &str) -> SensorCert {
        SensorCert {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("sensors/{id}.pem")),
            key: self.dir.join(format!("sensors/{id}-key.pem")),
        }
    }

    /// A sensor enrolled the fleet way: its key made in `dir` by
    /// `tidewatch-sensor enroll`, its CSR signed here for `id` and `vessel`
    /// (`sign_args`: more `pki sign` options, e.g. `--lifetime-secs`).
    pub fn enroll(&self, id: &str, vessel: &str, dir: &Path, sign_args: &[&str]) -> SensorCert {
        let (key, csr, cert) = (
            dir.join("key.pem"),
            dir.join("sensor.csr"),
            dir.join("cert.pem"),
        );
        run_ok(
            Command::new(bin("tidewatch-sensor"))
                .arg("enroll")
                .arg("--key")
                .arg(&key)
                .arg("--csr")
                .arg(&csr),
        );
        let mut args = vec!["sign", "--id", id, "--vessel", vessel];
        args.extend_from_slice(sign_args);
        let (csr_s, cert_s) = (csr.display().to_string(), cert.display().to_string());
        args.extend_from_slice(&["--csr", &csr_s, "--out", &cert_s]);
        self.run(&args);
        SensorCert {
            ca: self.dir.join("ca.pem"),
            cert,
            key,
        }
    }

    /// Starts the signer over this PKI on `port` (renewed certificates last
    /// `lifetime_secs`), logging to `log_dir/signer.log`.
    pub fn signer(&self, port: u16, lifetime_secs: u64, log_dir: &Path) -> Proc {
        let mut cmd = Command::new(bin("tidewatch-collector"));
        cmd.arg("signer")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--lifetime-secs")
            .arg(lifetime_secs.to_string())
            .env("RUST_LOG", "info");
        let mut p = Proc::spawn("signer", log_dir, &mut cmd);
        p.wait_log("signer listening", Duration::from_secs(30));
        p
    }

    /// Ingest options to renew through the signer on `port` (with an
    /// ingest certificate issued for it).
    pub fn signer_args(&self, port: u16) -> Vec<String> {
        if !self.dir.join("ingest/ingest-0.pem").exists() {
            self.run(&["issue-ingest", "--name", "ingest-0"]);
        }
        let p = |f: &str| self.dir.join(f).display().to_string();
        vec![
            "--signer".into(),
            format!("https://localhost:{port}"),
            "--signer-ca".into(),
            p("ca.pem"),
            "--signer-cert".into(),
            p("ingest/ingest-0.pem"),
            "--signer-key".into(),
            p("ingest/ingest-0-key.pem"),
        ]
    }
}

#[derive(Debug, Clone)]
pub struct SensorCert {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}
