//! The binary's behaviour that needs no broker.

use std::process::Command;

fn leadscore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leadscore"))
}

/// An unknown guarantee is a usage error naming both accepted values.
#[test]
fn run_rejects_an_unknown_processing_guarantee() {
    let out = leadscore()
        .args(["run", "--brokers", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--processing-guarantee", "exactly_twice"])
        .env("LEADSCORE_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exactly_once") && stderr.contains("at_least_once"), "{stderr}");
}

/// Config mistakes are reported before anything connects, all at once.
#[test]
fn run_reports_config_errors() {
    let out = leadscore()
        .args(["run", "--processing-guarantee", "at_least_once", "--listen", "127.0.0.1:0"])
        .env("LEADSCORE_KAFKA_COMMIT_INTERVAL_MS", "0")
        .env("LEADSCORE_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("brokers"), "missing brokers not reported: {stderr}");
    assert!(stderr.contains("commit_interval_ms"), "bad commit interval not reported: {stderr}");
}

/// A typo in a LEADSCORE_* variable is an error, not a silently ignored setting.
#[test]
fn run_rejects_unknown_environment_variables() {
    let out = leadscore()
        .args(["run", "--brokers", "127.0.0.1:1", "--processing-guarantee", "at_least_once"])
        .env("LEADSCORE_KAFKA_BROKER", "typo:9092")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("LEADSCORE_KAFKA_BROKER"), "{out:?}");
}

/// LEADSCORE_CONFIG names the config file when --config is not given: a mistake in the file it
/// names is reported (and so the file was read, not silently replaced by defaults).
#[test]
fn run_reads_the_config_file_named_by_leadscore_config() {
    let dir = std::env::temp_dir().join(format!("leadscore-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("leadscore.toml");
    std::fs::write(&path, "[kafka]\nbrokers = \"127.0.0.1:1\"\ncommit_interval_msec = 5\n").unwrap();
    let out = leadscore()
        .args(["run", "--listen", "127.0.0.1:0"])
        .env("LEADSCORE_CONFIG", &path)
        .env("LEADSCORE_LOG", "error")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("commit_interval_msec"), "the file's unknown key not reported: {stderr}");
}

/// The demo stops without an error line: every Kafka client is gone before its in-process
/// broker is (the committer thread held the producer past the service's shutdown, whose
/// connections then logged "all brokers down" at error level).
#[test]
fn demo_stops_without_error_lines() {
    let out =
        leadscore().args(["demo", "--listen", "127.0.0.1:0", "--duration-s", "4", "--rate", "500"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("demo stopped"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("ERROR"), "error lines: {stderr}");
}
