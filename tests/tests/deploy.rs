//! Deployment artefacts: the Helm chart (rendered by Helm's own engine,
//! linted strictly, every manifest validated against Kubernetes schemas),
//! the Dockerfiles (hadolint) and the sensor's systemd unit
//! (systemd-analyze) with its documented configuration.

use std::collections::BTreeSet;
use std::process::Command;

use tidewatch_tests::{bin, root};

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn helm_chart_renders_lints_and_validates_for_every_value_set() {
    let (ok, out, err) = run(Command::new("python3").arg(root().join("deploy/helm/check.py")));
    assert!(ok, "chart check failed:\n{out}\n{err}");
    let last = out.lines().last().unwrap_or("");
    assert_eq!(
        last, "helm chart: 11 value sets ok, 23 refusals ok",
        "\n{out}"
    );
}

#[test]
fn dockerfiles_pass_hadolint_and_build_what_the_readme_builds() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for (file, package) in [
        ("collector.Dockerfile", "tidewatch-collector"),
        ("sensor.Dockerfile", "tidewatch-sensor"),
    ] {
        let path = root().join("deploy/docker").join(file);
        let (ok, out, err) = run(Command::new("hadolint").arg(&path));
        assert!(ok, "hadolint {file}:\n{out}{err}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().filter(|l| l.starts_with("FROM ")).count() >= 2,
            "{file} is not multi-stage"
        );
        let users: Vec<&str> = text.lines().filter(|l| l.starts_with("USER ")).collect();
        assert_eq!(users, ["USER 65532:65532"], "{file} must end as non-root");
        let build = format!("cargo build --release --locked -p {package}");
        assert!(text.contains(&build), "{file} does not run `{build}`");
        assert!(readme.contains(&build), "README does not show `{build}`");
    }
}

/// `TIDEWATCH_*` variables named in `text`.
fn env_vars(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("TIDEWATCH_") && w.len() > "TIDEWATCH_".len())
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_unit_verifies_and_its_config_documents_every_option() {
    let unit =
        std::fs::read_to_string(root().join("deploy/systemd/tidewatch-sensor.service")).unwrap();
    // systemd-analyze checks that ExecStart exists: point it at the build.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidewatch-sensor.service");
    let sensor = bin("tidewatch-sensor");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tidewatch-sensor", sensor.to_str().unwrap()),
    )
    .unwrap();
    let (ok, out, err) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(
        ok && err.trim().is_empty(),
        "systemd-analyze verify:\n{out}{err}"
    );

    let (_, out, err) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path));
    let level: f64 = out
        .lines()
        .chain(err.lines())
        .find_map(|l| {
            l.split("Overall exposure level for tidewatch-sensor.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}{err}"));
    assert!(level <= 2.5, "exposure {level} too high:\n{out}");
    for line in [
        "CapabilityBoundingSet=CAP_NET_RAW",
        "AmbientCapabilities=CAP_NET_RAW",
        "StateDirectory=tidewatch-sensor",
        "ProtectSystem=strict",
        "Restart=always",
        "NoNewPrivileges=yes",
        "EnvironmentFile=/etc/tidewatch/sensor.env",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }

    // Every option of `run` is documented in the example config, and the
    // config names no option `run` does not know.
    let (ok, help, err) = run(Command::new(&sensor).args(["run", "--help"]));
    assert!(ok, "{err}");
    let accepted = env_vars(&help);
    let env = std::fs::read_to_string(root().join("deploy/systemd/sensor.env")).unwrap();
    let documented = env_vars(&env);
    let missing: Vec<_> = accepted.difference(&documented).collect();
    // The state directory is set by the unit itself (StateDirectory).
    assert_eq!(
        missing,
        [
            &"TIDEWATCH_PCAP".to_string(),
            &"TIDEWATCH_REPLAY_SPEED".into(),
            &"TIDEWATCH_STATE_DIR".into()
        ],
        "options of `run` not documented in sensor.env"
    );
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        unknown.is_empty(),
        "sensor.env names unknown options: {unknown:?}"
    );
    assert!(unit.contains("Environment=TIDEWATCH_STATE_DIR=/var/lib/tidewatch-sensor"));

    // Every value in the example (commented defaults included) is accepted:
    // `run` parses and checks all options before it reads the certificates,
    // so with a missing CA it must get exactly that far.
    let mut cmd = Command::new(&sensor);
    cmd.arg("run").env_clear();
    for l in env.lines() {
        let l = l.trim_start_matches('#');
        if let Some((k, v)) = l.split_once('=') {
            if k.starts_with("TIDEWATCH_") && !k.contains(' ') {
                cmd.env(k, v);
            }
        }
    }
    cmd.env("TIDEWATCH_CA", dir.path().join("no-such-ca.pem"))
        .env("TIDEWATCH_STATE_DIR", dir.path().join("state"));
    let (ok, _, err) = run(&mut cmd);
    assert!(!ok);
    assert!(
        err.contains("cannot read CA certificate") && err.contains("no-such-ca.pem"),
        "the example configuration was not accepted:\n{err}"
    );
}
