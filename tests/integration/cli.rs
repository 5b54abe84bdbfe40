//! The `whatsapp-host` binary as users run it: `check`, `run`, `send`, `events`, `messages` and the
//! settings errors they see.

use crate::helpers::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_summarizes_settings_without_printing_the_auth_key() {
    let config = TestConfig::simulated();
    std::fs::create_dir_all(config.dir.path().join("scripts")).unwrap();
    std::fs::write(config.dir.path().join("scripts/hello.js"), "1 + 1;").unwrap();
    let out = config.run(&["check"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("actions    1"), "{stdout}");
    assert!(stdout.contains("scripts    1"), "{stdout}");
    assert!(stdout.contains(ACCOUNT_SID), "{stdout}");
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    assert!(!stdout.contains(AUTH_KEY) && !text(&out.stderr).contains(AUTH_KEY));
}

#[test]
fn check_fails_on_an_action_that_does_not_compile_and_names_it() {
    let config = TestConfig::new()
        .api_base("simulate")
        .action("broken", "let = ;");
    config.write("127.0.0.1:9".parse().unwrap());
    let out = config.run(&["check"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("action \"broken\" failed to compile"),
        "{stdout}"
    );
}

#[test]
fn an_unknown_settings_key_is_one_clear_error_naming_file_and_key() {
    let config = TestConfig::simulated();
    let path = config.path();
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, toml.replace("from_number", "from_numbr")).unwrap();
    let out = config.run(&["check"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("whatsapp-host.toml"), "{stderr}");
    assert!(stderr.contains("from_numbr"), "{stderr}");
    assert!(!stderr.contains(AUTH_KEY), "{stderr}");
}

#[test]
fn a_missing_settings_file_says_how_to_create_one() {
    let config = TestConfig::new();
    let out = config.run(&["check"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("not found"), "{stderr}");
    assert!(stderr.contains("settings.example.toml"), "{stderr}");
}

#[test]
fn run_prints_the_scripts_logs_and_result() {
    let config = TestConfig::simulated();
    let script = config.dir.path().join("hello.js");
    std::fs::write(
        &script,
        "const r = JSON.parse(utils.sendWhatsappMessage('333 123 4567', 'hi'));\n\
         utils.info('sent ' + r.sid);\n\
         ({ status: r.status, to: r.to });",
    )
    .unwrap();
    let out = config.run(&["run", script.to_str().unwrap(), "--app", APP]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let result: serde_json::Value = serde_json::from_str(&stdout).expect("result is JSON");
    assert_eq!(result["status"], "queued");
    assert_eq!(result["to"], "whatsapp:+393331234567");
    assert!(stderr.contains("sent SM"), "{stderr}");
}

#[test]
fn run_exits_non_zero_with_the_error_when_the_script_throws() {
    let config = TestConfig::simulated();
    let script = config.dir.path().join("throws.js");
    std::fs::write(&script, "\nthrow new Error('no customer with id 42');").unwrap();
    let out = config.run(&["run", script.to_str().unwrap(), "--app", APP]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no customer with id 42"), "{stderr}");
}

#[test]
fn send_prints_the_outcome_and_records_the_message() {
    let config = TestConfig::simulated();
    let out = config.run(&[
        "send",
        "--app",
        APP,
        "--to",
        "0039 333 1234567",
        "--message",
        "hi",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let outcome: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let sid = outcome["sid"].as_str().expect("a sid");
    assert!(sid.starts_with("SM"));

    let listed = config.run(&["messages", "--sid", sid, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(shown["message"]["to"], "+393331234567");
    assert_eq!(shown["message"]["body"], "hi");
}

#[test]
fn send_to_an_invalid_number_prints_a_failed_outcome_and_exits_1() {
    let config = TestConfig::simulated();
    let out = config.run(&["send", "--app", APP, "--to", "12", "--message", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["sid"], serde_json::Value::Null);
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error_code"], 21211);
}

#[test]
fn a_company_that_is_not_a_valid_id_is_refused_before_anything_runs() {
    let config = TestConfig::simulated();
    let too_long = "x".repeat(65);
    for (company, expected) in [
        ("", "must not be empty"),
        (".", "must not be \".\" or \"..\""),
        ("..", "must not be \".\" or \"..\""),
        ("a/b", "'/'"),
        ("a\nb", "control characters"),
        (too_long.as_str(), "at most 64 characters"),
    ] {
        let out = config.run(&[
            "send",
            "--app",
            APP,
            "--company",
            company,
            "--to",
            "+393331234567",
            "--message",
            "hi",
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{company:?}: {stderr}");
        assert!(stderr.contains("--company"), "{company:?}: {stderr}");
        assert!(stderr.contains(expected), "{company:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{company:?}: nothing was sent");
    }
    let out = config.run(&["run", "x.js", "--app", APP, "--company", ".."]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// `events` and `messages`, as text and as JSON.
const LISTINGS: [&[&str]; 4] = [
    &["events"],
    &["events", "--json"],
    &["messages"],
    &["messages", "--json"],
];

#[test]
fn events_and_messages_before_anything_was_received_list_nothing_and_create_no_store() {
    let config = TestConfig::simulated();
    let fresh: Vec<String> = LISTINGS
        .iter()
        .map(|args| {
            let out = config.run(args);
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}{stderr}");
            assert!(
                stderr.contains("no store at") && stderr.contains("nothing has been received"),
                "{args:?}: {stderr}"
            );
            stdout
        })
        .collect();
    assert!(
        !config.data_dir().exists(),
        "a listing created the data directory"
    );
    assert!(fresh[0].trim_start().starts_with("id"), "{}", fresh[0]);
    assert_eq!(fresh[0].lines().count(), 1, "only the header: {}", fresh[0]);
    assert_eq!(fresh[1].trim(), "[]");
    assert_eq!(fresh[2], "");
    assert_eq!(fresh[3].trim(), "[]");

    let out = config.run(&["messages", "--sid", "SM1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no message with sid SM1"), "{stderr}");
    assert!(!config.data_dir().exists());

    // Byte for byte what an empty store prints, without the hint.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = whatsapp_host::store::Store::open(&config.data_dir()).unwrap();
        store.close().await;
    });
    for (args, fresh) in LISTINGS.iter().zip(&fresh) {
        let out = config.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(&text(&out.stdout), fresh, "{args:?}");
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("nothing has been received"), "{stderr}");
    }
}

#[test]
fn check_names_actions_whose_compiling_kills_the_worker_and_still_checks_the_scripts() {
    // Nested deeper than boa's parser has stack for: compiling it kills the worker.
    let deep = format!("var x = {}{};", "[".repeat(200_000), "]".repeat(200_000));
    let config = TestConfig::new().api_base("simulate").action("deep", &deep);
    config.write("127.0.0.1:9".parse().unwrap());
    std::fs::create_dir_all(config.dir.path().join("scripts")).unwrap();
    std::fs::write(config.dir.path().join("scripts/hello.js"), "1 + 1;").unwrap();
    let out = config.run(&["check"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("the worker compiling them died: worker crashed: stack overflow"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 problem(s)"),
        "the script still checks: {stdout}"
    );
}
