//! End to end: the operator subcommands (`telepatch calls`, `hangup`, `routes`, `patch`)
//! against a running gateway's REST API, with a fake Asterisk call on the line. Each
//! command is the real binary, so what is checked is what an operator sees: tables on
//! stdout, `--json` that parses, and `telepatch: <status>: <message>` with exit code 1
//! when the API refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{GatewayProcess, data, uuid};
use serde_json::Value;
use sip_glue::fake_asterisk::{CallEnd, FakeCall};

/// What one `telepatch` run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts the command failed as `main` reports an error: exit 1, one line on stderr
    /// starting with `prefix`.
    fn failed_with(self, prefix: &str) -> Run {
        assert_eq!(
            self.code,
            Some(1),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.starts_with(prefix),
            "expected {prefix:?}, stderr:\n{}",
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs `telepatch <args>` with `env` and no other `TELEPATCH_*` variable, off the async
/// runtime's workers (the fake call keeps streaming meanwhile).
async fn telepatch_env(args: Vec<String>, env: Vec<(&'static str, String)>) -> Run {
    let output: Output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_telepatch"));
        for (key, _) in std::env::vars() {
            if key.starts_with("TELEPATCH_") {
                command.env_remove(key);
            }
        }
        command.args(&args).envs(env).output().unwrap()
    })
    .await
    .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// A client of one gateway with one token.
struct Operator {
    api_url: String,
    token: Option<String>,
}

impl Operator {
    /// Runs `telepatch <args> --api-url URL [--token TOKEN]`.
    async fn run(&self, args: &[&str]) -> Run {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--api-url".to_owned(), self.api_url.clone()]);
        if let Some(token) = &self.token {
            all.extend(["--token".to_owned(), token.clone()]);
        }
        telepatch_env(all, Vec::new()).await
    }
}

/// The live calls as `telepatch calls --json` reports them.
async fn calls_json(admin: &Operator) -> Vec<Value> {
    let page = admin.run(&["calls", "--json"]).await.ok().json();
    let items = page["items"].as_array().expect("items").clone();
    assert_eq!(page["total"].as_u64(), Some(items.len() as u64), "{page}");
    items
}

fn find<'a>(items: &'a [Value], key: &str, value: &Value) -> Option<&'a Value> {
    items.iter().find(|item| &item[key] == value)
}

/// The table row (a stdout line) containing every one of `needles`.
fn row<'a>(table: &'a str, needles: &[&str]) -> Option<&'a str> {
    table
        .lines()
        .find(|line| needles.iter().all(|n| line.contains(n)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_drive_a_live_gateway() {
    let media = data("prompt-8k.wav").canonicalize().unwrap();
    let media = media.parent().unwrap().display();
    let gateway = GatewayProcess::start(&format!("[media]\ndir = \"{media}\"\n"));
    let admin = Operator {
        api_url: gateway.api_url(),
        token: Some(gateway.token("ops", "admin")),
    };
    let reader = Operator {
        api_url: gateway.api_url(),
        token: Some(gateway.token("viewer", "read")),
    };
    let anonymous = Operator {
        api_url: gateway.api_url(),
        token: None,
    };

    // A caller with no route waits in the lobby (silence: no hold music configured).
    let id = uuid();
    let call = tokio::spawn(FakeCall::new(gateway.addr, id).until_hangup().run());
    let until = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        if let Some(call) = find(
            &calls_json(&admin).await,
            "uuid",
            &Value::from(id.to_string()),
        ) {
            break call.clone();
        }
        assert!(
            Instant::now() < until,
            "call {id} never listed; logs:\n{}",
            gateway.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed["state"], "lobby", "{listed}");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The table, with the address and token from the environment this time.
    let env = vec![
        ("TELEPATCH_API_URL", gateway.api_url()),
        ("TELEPATCH_TOKEN", reader.token.clone().unwrap()),
    ];
    let table = telepatch_env(vec!["calls".into()], env).await.ok().stdout;
    let header = table.lines().next().unwrap();
    for column in [
        "UUID", "STATE", "RATE", "DURATION", "ROUTE", "TALKING", "VOICE",
    ] {
        assert!(header.contains(column), "{table}");
    }
    assert!(
        row(&table, &[&id.to_string(), "lobby", "8 kHz"]).is_some(),
        "{table}"
    );

    // Routes: add one as text and one from a file, list them, delete them.
    let desk = r#"{"name":"desk","priority":5,"match":{"uuid_prefix":"c0de"},"actions":[{"action":"conference","name":"desk"}]}"#;
    let added = admin.run(&["routes", "add", desk]).await.ok().stdout;
    assert!(
        row(&added, &["desk", "5", "prefix c0de", "api", "1"]).is_some(),
        "{added}"
    );
    let file = gateway.dir.path().join("closed.json");
    std::fs::write(&file, r#"{"name":"closed","match":"default","actions":[]}"#).unwrap();
    admin
        .run(&["routes", "add", &format!("@{}", file.display())])
        .await
        .ok();
    let table = reader.run(&["routes", "list"]).await.ok().stdout;
    assert!(
        row(&table, &["desk", "5", "prefix c0de", "api", "1"]).is_some(),
        "{table}"
    );
    assert!(
        row(&table, &["closed", "0", "default", "api", "0"]).is_some(),
        "{table}"
    );
    let routes = reader.run(&["routes", "list", "--json"]).await.ok().json();
    let stored =
        find(routes.as_array().unwrap(), "name", &Value::from("desk")).expect("desk listed");
    assert_eq!(stored["match"]["uuid_prefix"], "c0de", "{stored}");
    assert_eq!(stored["actions"][0]["action"], "conference", "{stored}");
    admin.run(&["routes", "delete", "desk"]).await.ok();
    admin.run(&["routes", "delete", "closed"]).await.ok();
    let routes = reader.run(&["routes", "list", "--json"]).await.ok().json();
    assert_eq!(routes.as_array().unwrap().len(), 0, "{routes}");
    admin
        .run(&["routes", "delete", "desk"])
        .await
        .failed_with("telepatch: 404 Not Found: ");

    // Mistakes are reported, not sent or not applied.
    admin
        .run(&["routes", "add", "{nope"])
        .await
        .failed_with("telepatch: the route is not valid JSON: ");
    admin
        .run(&[
            "routes",
            "add",
            r#"{"name":"x","match":"default","colour":"red"}"#,
        ])
        .await
        .failed_with("telepatch: 422 Unprocessable Entity: ");
    let denied = reader
        .run(&["routes", "add", desk])
        .await
        .failed_with("telepatch: 403 Forbidden: ");
    assert!(denied.stderr.contains("viewer"), "{}", denied.stderr);
    let anonymous_run = anonymous
        .run(&["calls"])
        .await
        .failed_with("telepatch: no API token");
    assert!(
        anonymous_run.stderr.contains("telepatch token create"),
        "{}",
        anonymous_run.stderr
    );
    let wrong_token = Operator {
        api_url: gateway.api_url(),
        token: Some("tp_not-a-token".into()),
    };
    wrong_token
        .run(&["calls"])
        .await
        .failed_with("telepatch: 401 Unauthorized: ");

    // A patch from a player that does not exist yet is refused with the API's reason...
    let sink = format!("call:{id}.ear");
    admin
        .run(&["patch", "add", "player:x.out", &sink])
        .await
        .failed_with("telepatch: 422 Unprocessable Entity: no node player:x");
    let prompt = "prompt-8k.wav";
    let created = reqwest::Client::new()
        .post(format!("{}/v1/nodes", gateway.api_url()))
        .bearer_auth(admin.token.as_deref().unwrap())
        .json(&serde_json::json!({"name": "x", "config": {"kind": "player", "file": prompt, "loop": true}, "persistent": false}))
        .send()
        .await
        .unwrap();
    let status = created.status();
    assert_eq!(
        status.as_u16(),
        201,
        "POST /v1/nodes: {}",
        created.text().await.unwrap()
    );

    // ...and made once it does.
    let patch_requested = Instant::now();
    let patch = admin
        .run(&[
            "patch",
            "add",
            "player:x.out",
            &sink,
            "--gain-db",
            "-3",
            "--json",
        ])
        .await
        .ok()
        .json();
    let patched = Instant::now();
    assert_eq!(patch["source"], "player:x.out", "{patch}");
    assert_eq!(patch["sink"], Value::from(sink.clone()), "{patch}");
    assert_eq!(patch["gain_db"], -3.0, "{patch}");
    let patch_id = patch["id"].as_u64().expect("patch id");
    let table = reader.run(&["patch", "list"]).await.ok().stdout;
    let line = row(
        &table,
        &[
            &format!("player:x.out -> {sink}"),
            "-3.0 dB",
            "normal",
            "no",
        ],
    )
    .unwrap_or_else(|| panic!("{table}"));
    assert!(line.starts_with(&patch_id.to_string()), "{table}");
    let patches = reader.run(&["patch", "list", "--json"]).await.ok().json();
    assert!(
        find(
            patches["items"].as_array().unwrap(),
            "id",
            &Value::from(patch_id)
        )
        .is_some(),
        "{patches}"
    );
    let listed = find(
        &calls_json(&reader).await,
        "uuid",
        &Value::from(id.to_string()),
    )
    .cloned()
    .expect("call still live");
    assert_eq!(
        listed["state"], "patched",
        "a deliberate patch takes the call out of the lobby: {listed}"
    );

    // Let the caller hear the prompt for a while, then unpatch.
    tokio::time::sleep_until((patched + Duration::from_millis(1300)).into()).await;
    let unpatch_requested = Instant::now();
    admin
        .run(&["patch", "delete", &patch_id.to_string()])
        .await
        .ok();
    let patches = reader.run(&["patch", "list", "--json"]).await.ok().json();
    assert!(
        find(
            patches["items"].as_array().unwrap(),
            "id",
            &Value::from(patch_id)
        )
        .is_none(),
        "{patches}"
    );
    admin
        .run(&["patch", "delete", &patch_id.to_string()])
        .await
        .failed_with("telepatch: 404 Not Found: ");

    // Hangup: the gateway sends 00 00 00 and the call leaves the list.
    admin.run(&["hangup", &id.to_string()]).await.ok();
    let report = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("call ended")
        .unwrap()
        .unwrap();
    assert_eq!(report.end, CallEnd::ServerHangup, "{report:?}");
    assert!(report.hangup_received);
    let until = Instant::now() + Duration::from_secs(5);
    while find(
        &calls_json(&admin).await,
        "uuid",
        &Value::from(id.to_string()),
    )
    .is_some()
    {
        assert!(Instant::now() < until, "hung-up call still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin
        .run(&["hangup", &id.to_string()])
        .await
        .failed_with("telepatch: 404 Not Found: ");

    // The caller heard silence in the lobby until the patch was requested, then the
    // prompt. Every 1 s stretch of the looped prompt peaks at 0.45 full scale or more
    // (measured on tests/data/prompt-8k.wav), 0.32 after the -3 dB of the patch; the
    // first 100 ms after the CLI returned are skipped for the downlink's latency.
    let heard_between = |from: Instant, to: Instant| -> &[f32] {
        let offset = |at: Instant| {
            report
                .frames
                .iter()
                .take_while(|f| f.at < at)
                .map(|f| f.samples)
                .sum::<usize>()
        };
        &report.received[offset(from)..offset(to)]
    };
    let rate = report.received_rate.expect("caller received audio").hz() as usize;
    let peak = |x: &[f32]| x.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    let lobby = heard_between(report.connected_at, patch_requested);
    assert!(
        lobby.len() > rate / 5,
        "only {} samples heard in the lobby",
        lobby.len()
    );
    assert!(peak(lobby) < 1e-3, "lobby peak {}", peak(lobby));
    let prompt = heard_between(patched + Duration::from_millis(100), unpatch_requested);
    assert!(
        prompt.len() >= rate,
        "only {} samples heard while patched",
        prompt.len()
    );
    assert!(
        peak(prompt) > 0.2,
        "peak heard while patched {}",
        peak(prompt)
    );
    eprintln!(
        "lobby: {} samples, peak {:.5}; patched: {} samples, peak {:.3}",
        lobby.len(),
        peak(lobby),
        prompt.len(),
        peak(prompt)
    );

    // An address nobody listens on is reported as such.
    let nobody = Operator {
        api_url: "http://127.0.0.1:1".into(),
        token: admin.token.clone(),
    };
    nobody
        .run(&["calls"])
        .await
        .failed_with("telepatch: cannot reach the gateway's API at http://127.0.0.1:1/v1/calls");
}
