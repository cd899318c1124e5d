//! End to end: `telepatch check-config` validates the file, the `TELEPATCH_*` environment
//! and the flags together, with precedence flag > environment > file > default, and
//! reports every problem with its location.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

fn telepatch() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_telepatch"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TELEPATCH_") {
            command.env_remove(key);
        }
    }
    command
}

#[test]
fn defaults_are_valid_and_bind_loopback() {
    let output = telepatch().arg("check-config").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:9092\""), "{text}");
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.toml");
    std::fs::write(
        &file,
        "[audiosocket]\nmax_calls = 3\nlisten = \"127.0.0.1:7000\"\n",
    )
    .unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut command = telepatch();
        command
            .arg("--config")
            .arg(&file)
            .args(extra)
            .arg("check-config");
        for (k, v) in env {
            command.env(k, v);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(run(&[], &[]).contains("max_calls = 3"));
    assert!(run(&[], &[("TELEPATCH_MAX_CALLS", "5")]).contains("max_calls = 5"));
    let both = run(&["--max-calls", "9"], &[("TELEPATCH_MAX_CALLS", "5")]);
    assert!(both.contains("max_calls = 9"), "{both}");
    assert!(
        both.contains("listen = \"127.0.0.1:7000\""),
        "file values stay: {both}"
    );
}

#[test]
fn invalid_configuration_is_rejected_with_every_problem_located() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[audiosocket]\nmax_calls = 0\nreply_rate = 11025\n\n[lobby]\nhold_music = \"missing.wav\"\n",
    )
    .unwrap();
    let output = telepatch()
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8(output.stderr).unwrap();
    for needle in [
        "audiosocket.max_calls",
        "audiosocket.reply_rate",
        "lobby.hold_music",
    ] {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }

    std::fs::write(&file, "[audiosocket]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let output = telepatch()
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(text.contains("unknown field `lisen`"), "{text}");
}

/// The README's configuration table gives `database.cdr_queue = 10000`: `check-config`
/// prints that default, and a queue of 0 (no call record could wait for the database)
/// is refused.
#[test]
fn the_call_record_queue_defaults_to_what_the_readme_says() {
    let output = telepatch().arg("check-config").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("cdr_queue = 10000\n"), "{text}");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(
        readme.contains("| `database.cdr_queue` | `10000` |"),
        "README's configuration table"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zero.toml");
    std::fs::write(&file, "[database]\ncdr_queue = 0\n").unwrap();
    let output = telepatch()
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(text.contains("database.cdr_queue"), "{text}");
}
