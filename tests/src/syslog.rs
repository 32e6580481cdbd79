//! A real syslog receiver for tests: Debian's rsyslogd with a config of
//! its own (TCP input on a free 127.0.0.1 port, octet-counted framing, each
//! message's raw text appended to a file, processed synchronously; and
//! again, after the time rsyslog received it, to a second file).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{free_port, wait_until, Proc};

pub struct Rsyslog {
    pub port: u16,
    /// Where received messages go, one per line.
    pub out: PathBuf,
    /// The same, each after its reception time (RFC 3339, microseconds).
    arrivals: PathBuf,
    dir: PathBuf,
    /// (CA, certificate, key) for TLS (RFC 5425, OpenSSL driver).
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    proc: Option<Proc>,
}

impl Rsyslog {
    /// Starts rsyslogd in `dir` on a free port.
    pub fn start(dir: &Path) -> Rsyslog {
        Rsyslog::start_with(dir, None)
    }

    /// Starts rsyslogd in `dir` on a free port, over TLS with the server
    /// certificate and key (and CA) given.
    pub fn start_with(dir: &Path, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Rsyslog {
        let mut r = Rsyslog {
            port: free_port(),
            out: dir.join("received.log"),
            arrivals: dir.join("arrivals.log"),
            dir: dir.to_path_buf(),
            tls,
            proc: None,
        };
        r.restart();
        r
    }

    /// Starts it (again) on the same port and file.
    pub fn restart(&mut self) {
        std::fs::create_dir_all(self.dir.join("work")).expect("rsyslog dir");
        let conf = self.dir.join("rsyslog.conf");
        let (global_tls, module_tls) = match &self.tls {
            Some((ca, cert, key)) => (
                format!(
                    r#" DefaultNetstreamDriver="ossl" DefaultNetstreamDriverCAFile="{}" DefaultNetstreamDriverCertFile="{}" DefaultNetstreamDriverKeyFile="{}""#,
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
                r#" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon""#
                    .to_string(),
            ),
            None => (String::new(), String::new()),
        };
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}"{global_tls})
main_queue(queue.type="Direct")
module(load="imtcp"{module_tls})
template(name="raw" type="string" string="%rawmsg%\n")
template(name="timed" type="string" string="%timegenerated:::date-rfc3339% %rawmsg%\n")
ruleset(name="tw" queue.type="Direct") {{
  action(type="omfile" file="{out}" template="raw" queue.type="Direct" flushOnTXEnd="on" asyncWriting="off")
  action(type="omfile" file="{arrivals}" template="timed" queue.type="Direct" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="tw")
"#,
                work = self.dir.join("work").display(),
                out = self.out.display(),
                arrivals = self.arrivals.display(),
                port = self.port
            ),
        )
        .expect("rsyslog.conf");
        let mut cmd = Command::new("rsyslogd");
        cmd.arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"));
        let p = Proc::spawn("rsyslogd", &self.dir, &mut cmd);
        let port = self.port;
        wait_until(Duration::from_secs(20), "rsyslogd listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        self.proc = Some(p);
    }

    /// Kills it (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        let _ = std::fs::remove_file(self.dir.join("rsyslogd.pid"));
    }

    /// The messages received so far.
    pub fn messages(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The messages received so far, each with the Unix time (seconds)
    /// rsyslog received it.
    pub fn arrivals(&self) -> Vec<(f64, String)> {
        use time::format_description::well_known::Rfc3339;
        std::fs::read_to_string(&self.arrivals)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (at, msg) = l.split_once(' ')?;
                let t = time::OffsetDateTime::parse(at, &Rfc3339).ok()?;
                Some((t.unix_timestamp_nanos() as f64 / 1e9, msg.to_string()))
            })
            .collect()
    }
}
