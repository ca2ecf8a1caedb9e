//! `rocketchat-shim demo`: a stand-in Rocket.Chat with seeded users and DM rooms, the shim in
//! front of it with a demo policy, and ready-to-paste curl commands. Nothing else is needed.

use std::net::SocketAddr;
use std::time::Duration;

use rocketchat_standin::{Room, Seed, Standin, User};

use crate::config::{Budget, Config, DmHistoryEndpoint, RolesSource};
use crate::server;

/// Runs until Ctrl-C or SIGTERM.
pub async fn run() -> Result<(), String> {
    // A second administrator, used only by the 429 loop, so that the commands printed before
    // it (the admin's 200s and 400s) do not spend the budget the loop shows running out.
    let mut seed = Seed::default();
    seed.users.push(User::new(
        "ops-id",
        "ops",
        "ops-pass",
        "ops-token",
        &["user", "admin"],
    ));
    // The access rules (spec/shim.md 9.2-9.3): a protected user, the CEO, whose DM with alice
    // no one may read through the shim, and a third administrator, legal, who tries (with a
    // budget of their own, so the commands above and below keep their answers).
    seed.users.push(User::new(
        "ceo-id",
        "ceo",
        "ceo-pass",
        "ceo-token",
        &["user"],
    ));
    seed.users.push(User::new(
        "legal-id",
        "legal",
        "legal-pass",
        "legal-token",
        &["user", "admin"],
    ));
    seed.rooms
        .push(Room::new("alice-idceo-id", 'd', &["alice", "ceo"], 4));
    let standin = Standin::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), seed)
        .await
        .map_err(|e| format!("cannot start the stand-in Rocket.Chat: {e}"))?;
    let mut config = config_disabled(&standin.url())?;
    config.policy.dm_history_endpoint = DmHistoryEndpoint::Enabled;
    config.policy.roles = RolesSource::Upstream;
    config.rate_limit.per_user = Budget {
        requests: 5,
        per: Duration::from_secs(60),
    };
    // The audit trail, in a file of its own for this run (every answer below leaves a record).
    let audit_path = std::env::temp_dir().join(format!(
        "rocketchat-shim-demo-audit-{}.jsonl",
        std::process::id()
    ));
    config.audit.enabled = true;
    config.audit.path = audit_path.clone();
    config.audit.instance = "demo".into();
    config.policy.protected_users = vec!["ceo".into()];
    let audit = audit_path.display();
    // Prefer the documented ports; fall back to free ones.
    let running = match server::start(config.clone()).await {
        Ok(r) => r,
        Err(_) => {
            config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            config.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            server::start(config)
                .await
                .map_err(|e| format!("cannot start the shim: {e}"))?
        }
    };
    // A second shim with the shipped default policy (endpoint disabled), to show that answer.
    let mut off = config_disabled(&standin.url())?;
    off.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    off.admin.listen = None;
    let disabled = server::start(off)
        .await
        .map_err(|e| format!("cannot start the second shim: {e}"))?;
    let shim_off = format!("http://{}", disabled.addr);
    // A third shim that requires a reason (a ticket number) for every read, with a trail of
    // its own (two writers never share one chained file).
    let reasons_path = std::env::temp_dir().join(format!(
        "rocketchat-shim-demo-reasons-{}.jsonl",
        std::process::id()
    ));
    let mut why = config_disabled(&standin.url())?;
    why.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    why.admin.listen = None;
    why.policy.dm_history_endpoint = DmHistoryEndpoint::Enabled;
    why.policy.require_reason = true;
    why.policy.reason_pattern = "^(INC|CASE)-[0-9]+".into();
    why.audit.enabled = true;
    why.audit.path = reasons_path.clone();
    why.audit.instance = "demo-reasons".into();
    let reasons = server::start(why)
        .await
        .map_err(|e| format!("cannot start the third shim: {e}"))?;
    let shim_why = format!("http://{}", reasons.addr);
    let reasons_audit = reasons_path.display();
    let shim = format!("http://{}", running.addr);
    let admin = running
        .admin_addr
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    let up = standin.url();
    let ep = "/api/v1/dm.messages.others?roomId=alice-idbob-id&count=2";
    let admin_h = "-H 'X-User-Id: admin-id' -H 'X-Auth-Token: admin-token'";
    let alice_h = "-H 'X-User-Id: alice-id' -H 'X-Auth-Token: alice-token'";
    let ops_h = "-H 'X-User-Id: ops-id' -H 'X-Auth-Token: ops-token'";
    let legal_h = "-H 'X-User-Id: legal-id' -H 'X-Auth-Token: legal-token'";
    println!(
        r#"rocketchat-shim demo
  stand-in Rocket.Chat: {up}   (users: admin/admin-token, ops/ops-token, alice/alice-token; DM room alice-idbob-id)
  shim:                 {shim}
  shim, endpoint off:   {shim_off}
  shim, reasons:        {shim_why}   (policy.require_reason, reason_pattern = "^(INC|CASE)-[0-9]+")
  admin:                {admin}   (/livez, /readyz, /metrics)

Policy: endpoint enabled, roles from the upstream (admin holds view-room-administration),
per-user budget 5 requests a minute, cache ttl 5s, protected_users = ["ceo"],
audit trail on: {audit}

# 200: the admin reads alice's DM with bob (first a miss, then a hit: see Cache-Status)
curl -si {admin_h} '{shim}{ep}'
curl -si {admin_h} '{shim}{ep}' | grep -i cache-status

# 401: no credentials
curl -si '{shim}{ep}'

# 403: alice does not hold view-room-administration
curl -si {alice_h} '{shim}{ep}'

# 400: bypass attempts the shim refuses (operator injection, unlimited count)
curl -si -g {admin_h} '{shim}/api/v1/im.messages.others?roomId[$ne]=x'
curl -si {admin_h} '{shim}/api/v1/im.messages.others?roomId=alice-idbob-id&count=-100000'
curl -si {admin_h} '{shim}/api/v1/IM.MESSAGES.OTHERS/?roomId=alice-idbob-id&query=%7B%22%24where%22%3A%221%22%7D'

# 403: the CEO is a protected user: legal, an administrator, may not read the CEO's DM with
# alice through the shim (policy.protected_users; spec/shim.md 9.3)
curl -si {legal_h} '{shim}/api/v1/im.messages.others?roomId=alice-idceo-id'

# 429: the per-user budget is 5 a minute. A second administrator, ops, whose budget nothing
# above has touched: 5 answers are allowed, then the rest are refused with Rocket.Chat's body,
# X-RateLimit-* and Retry-After (prints 200 200 200 200 200 429 429 429; run it again within
# the minute and every one is a 429)
for i in 1 2 3 4 5 6 7 8; do curl -s -o /dev/null -w '%{{http_code}} ' -H 'Cache-Control: no-cache' {ops_h} '{shim}{ep}'; done; echo

# 400: the endpoint disabled by policy (a second shim, {shim_off}, runs the shipped default
# policy.dm_history_endpoint = "disabled"): Rocket.Chat's own error-endpoint-disabled
curl -si {admin_h} '{shim_off}{ep}'

# 400: the third shim ({shim_why}) requires a reason, a ticket number, in X-Audit-Reason;
# without one Rocket.Chat-style error-reason-required, with one the read is served and the
# reason is in its audit record ({reasons_audit})
curl -si {admin_h} '{shim_why}{ep}'
curl -si {admin_h} -H 'X-Audit-Reason: INC-4711 works council request' '{shim_why}{ep}'

# Everything else passes through untouched, websockets included
curl -si '{shim}/api/info'

# Metrics
curl -s '{admin}/metrics' | grep -E '^rcshim_(requests_total|cache_|ratelimit_|audit_)'

# The audit trail: one record for every answer of the endpoint above, allowed or refused
# (who, which room and its members, what, how many messages), fsync'd before each 200 was
# sent and chained by SHA-256. Check the chain, then ask "who read alice's DMs?":
rocketchat-shim audit verify {audit}
rocketchat-shim audit report --user alice {audit}
# The records of the reasons shim (the refusal, then the read with its reason):
tail -n 2 {reasons_audit}

Press Ctrl-C to stop."#
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    running.shutdown();
    disabled.shutdown();
    reasons.shutdown();
    running.wait().await;
    disabled.wait().await;
    reasons.wait().await;
    standin.shutdown().await;
    Ok(())
}

/// The shipped defaults pointed at `url` (the endpoint disabled).
fn config_disabled(url: &str) -> Result<Config, String> {
    let mut config = Config::default();
    config.upstream.url = crate::config::parse_upstream_url(url)?;
    Ok(config)
}
