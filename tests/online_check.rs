//! `rocketchat-shim check --online` as operators run it: the built binary against the stand-in,
//! exact lines on stdout, exit 0 when the upstream answered, 1 when it could not be reached,
//! 2 on an invalid config.

mod common;

use std::path::Path;

use common::proc::*;
use common::*;
use rocketchat_standin::Standin;

/// Runs `check --online --config PATH` with `env` set (and the service-token variable cleared
/// unless `env` sets it) and returns (exit code, stdout, stderr).
async fn check_online(config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("check")
        .arg("--online")
        .arg("--config")
        .arg(config)
        .env_remove("ROCKETCHAT_SHIM_SERVICE_TOKEN")
        .env_remove("ROCKETCHAT_SHIM_CONFIG")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Bounded: the configured connect and response timeouts end it well before this.
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("check --online ended")
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_reaches_a_fitting_upstream_and_says_so() {
    let standin = Standin::start().await.expect("standin");
    let dir = tempdir("online-fit");
    let cfg = write_config(&dir, &standin.url(), "");
    let (code, out, err) = check_online(&cfg, &[]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        format!(
            "ok\n\
             version: 6.13.0; policy.error_style = \"modern\" fits it (Rocket.Chat 6 and later)\n\
             setting: not read: no [upstream.service_account] is configured; policy.dm_history_endpoint = \"disabled\" decides alone\n\
             address: {} is loopback\n",
            standin.addr()
        )
    );
    // One anonymous /api/info, nothing else.
    let reqs = standin.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].path, "/api/info");
    assert_eq!(reqs[0].header("x-user-id"), None);
    assert_eq!(
        reqs[0].header("host"),
        Some(standin.addr().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_says_when_the_error_style_does_not_fit() {
    let standin = Standin::start().await.expect("standin");
    standin.set_version("5.4.2");
    let dir = tempdir("online-misfit");
    let cfg = write_config(&dir, &standin.url(), "");
    let (code, out, err) = check_online(&cfg, &[]).await;
    // Reached: exit 0 even though the style is wrong (the line says so).
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(
        lines[1],
        "version: 5.4.2; policy.error_style = \"modern\" does not fit it: Rocket.Chat before 6 needs \"legacy\""
    );

    // "legacy" fits the old server, and not a 6.x one (Rocket.Chat's anonymous /api/info says
    // only major.minor since 4.0).
    let cfg = write_config(&dir, &standin.url(), "[policy]\nerror_style = \"legacy\"\n");
    let (code, out, _) = check_online(&cfg, &[]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out.lines().nth(1),
        Some("version: 5.4.2; policy.error_style = \"legacy\" fits it (Rocket.Chat before 6)")
    );
    standin.set_version("7.0");
    let (code, out, _) = check_online(&cfg, &[]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out.lines().nth(1),
        Some("version: 7.0; policy.error_style = \"legacy\" does not fit it: Rocket.Chat 6 and later needs \"modern\"")
    );

    // An answer without a version: reached, but nothing to compare.
    standin.set_version("");
    let (code, out, _) = check_online(&cfg, &[]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out.lines().nth(1),
        Some("version: unknown (\"\" is not a version); cannot tell whether policy.error_style = \"legacy\" fits")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_reads_the_setting_with_the_service_account() {
    let standin = Standin::start().await.expect("standin");
    standin.set_dm_history_enabled(false);
    let dir = tempdir("online-setting");
    let cfg = write_config(
        &dir,
        &standin.url(),
        "[upstream.service_account]\nuser_id = \"admin-id\"\n[policy]\ndm_history_endpoint = \"upstream\"\n",
    );
    let (code, out, err) =
        check_online(&cfg, &[("ROCKETCHAT_SHIM_SERVICE_TOKEN", "admin-token")]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        format!(
            "ok\n\
             version: 6.13.0; policy.error_style = \"modern\" fits it (Rocket.Chat 6 and later)\n\
             setting: API_Enable_Direct_Message_History_EndPoint is false upstream (disabled), read as \"admin-id\"; policy.dm_history_endpoint = \"upstream\" follows it\n\
             address: {} is loopback\n",
            standin.addr()
        )
    );
    let reqs = standin.requests();
    let setting = reqs
        .iter()
        .find(|r| r.path == "/api/v1/settings/API_Enable_Direct_Message_History_EndPoint")
        .expect("the setting was asked for");
    assert_eq!(setting.method, "GET");
    assert_eq!(setting.header("x-user-id"), Some("admin-id"));
    assert_eq!(setting.header("x-auth-token"), Some("admin-token"));

    // Enabled upstream, and a local policy that overrides it.
    standin.set_dm_history_enabled(true);
    let cfg2 = write_config(
        &tempdir("online-setting-2"),
        &standin.url(),
        "[upstream.service_account]\nuser_id = \"admin-id\"\n[policy]\ndm_history_endpoint = \"disabled\"\n",
    );
    let (code, out, _) =
        check_online(&cfg2, &[("ROCKETCHAT_SHIM_SERVICE_TOKEN", "admin-token")]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out.lines().nth(2),
        Some("setting: API_Enable_Direct_Message_History_EndPoint is true upstream (enabled), read as \"admin-id\"; policy.dm_history_endpoint = \"disabled\" overrides it")
    );

    // A string "true" is not Rocket.Chat's boolean true.
    standin.set_setting_value(
        "API_Enable_Direct_Message_History_EndPoint",
        serde_json::json!("true"),
    );
    let (_, out, _) =
        check_online(&cfg2, &[("ROCKETCHAT_SHIM_SERVICE_TOKEN", "admin-token")]).await;
    assert_eq!(
        out.lines().nth(2),
        Some("setting: API_Enable_Direct_Message_History_EndPoint is \"true\" upstream (disabled: only the boolean true enables it), read as \"admin-id\"; policy.dm_history_endpoint = \"disabled\" overrides it")
    );
    standin.set_dm_history_enabled(true);

    // The token variable not set: said, and what it means for "upstream".
    let (code, out, _) = check_online(&cfg, &[]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out.lines().nth(2),
        Some("setting: not read: the environment variable ROCKETCHAT_SHIM_SERVICE_TOKEN (upstream.service_account.token_env) is not set; policy.dm_history_endpoint = \"upstream\" cannot start without it")
    );

    // A wrong token: 401. A user without view-privileged-setting: 403.
    let (code, out, _) =
        check_online(&cfg, &[("ROCKETCHAT_SHIM_SERVICE_TOKEN", "wrong-token")]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out.lines().nth(2),
        Some("setting: not read: the upstream answered 401 Unauthorized to \"admin-id\" (wrong user_id or token); policy.dm_history_endpoint = \"upstream\" answers 502 on the endpoint until it can")
    );
    let cfg3 = write_config(
        &tempdir("online-setting-3"),
        &standin.url(),
        "[upstream.service_account]\nuser_id = \"alice-id\"\n[policy]\ndm_history_endpoint = \"upstream\"\n",
    );
    let (code, out, _) =
        check_online(&cfg3, &[("ROCKETCHAT_SHIM_SERVICE_TOKEN", "alice-token")]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out.lines().nth(2),
        Some("setting: not read: the upstream answered 403 Forbidden to \"alice-id\" (the account lacks view-privileged-setting); policy.dm_history_endpoint = \"upstream\" answers 502 on the endpoint until it can")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_exits_1_when_the_upstream_is_down() {
    let port = dead_port();
    let dir = tempdir("online-down");
    let cfg = write_config(&dir, &format!("http://127.0.0.1:{port}"), "");
    let (code, out, err) = check_online(&cfg, &[]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], "ok");
    let want = format!(
        "upstream: not reached: http://127.0.0.1:{port}/api/info: cannot connect to the upstream: "
    );
    assert!(lines[1].starts_with(&want), "{}", lines[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_exits_2_on_an_invalid_config() {
    let dir = tempdir("online-bad");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[upstream]\nurl = \"http://127.0.0.1:3000\"\nretries = 3\n",
    )
    .expect("write");
    let (code, out, err) = check_online(&bad, &[]).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert_eq!(out, "");
    assert!(err.starts_with(&format!("{}:3:1:", bad.display())), "{err}");
    // A missing file too.
    let (code, out, _) = check_online(&dir.join("missing.toml"), &[]).await;
    assert_eq!(code, Some(2));
    assert_eq!(out, "");
}
