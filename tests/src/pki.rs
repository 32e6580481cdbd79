//! A fleet PKI made with the real `tidewatch-collector pki` commands.

use std::path::PathBuf;
use std::process::Command;

use crate::process::{bin, run_ok};

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
}

#[derive(Debug, Clone)]
pub struct SensorCert {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}
