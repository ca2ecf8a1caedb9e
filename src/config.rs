//! Typed configuration: the `config.toml` contract of `spec/config.md`.
//!
//! Parsing is strict: unknown keys are refused (`deny_unknown_fields`) and every error names
//! the file with its line and column (TOML syntax and type errors) or the key and what is wrong
//! with it (semantic validation: zero limits, bad URLs, bad CIDRs, ...). Durations are strings
//! such as `"500ms"`, `"5s"`, `"2m"`; sizes are integers (bytes) or strings such as `"64MiB"`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub policy: PolicyConfig,
    pub cache: CacheConfig,
    pub rate_limit: RateLimitConfig,
    pub audit: AuditConfig,
}

/// `[server]`: the client-facing listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// An HTTP/2 client connection with no open stream is closed after this (PINGs, SETTINGS
    /// and WINDOW_UPDATE are not activity). Never applied to tunnels.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "de_size")]
    pub max_header_bytes: u64,
    pub max_connections: u64,
    #[serde(deserialize_with = "de_cidrs")]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// Peers in `trusted_proxies` must open with a PROXY protocol (v1 or v2) header, whose
    /// source address is then the client's (spec section 10).
    pub proxy_protocol: bool,
    /// `[server.tls]`: terminate TLS on `listen` when present.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: the certificate chain and key served on `server.listen`, both PEM files,
/// re-read on every reload (SIGHUP).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key: PKCS#8, PKCS#1 or SEC1.
    pub key_file: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 65536,
            max_connections: 10000,
            trusted_proxies: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            proxy_protocol: false,
            tls: None,
        }
    }
}

/// `[admin]`: the operator listener; `listen = ""` turns it off.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    #[serde(deserialize_with = "de_opt_addr")]
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        }
    }
}

/// `[upstream]`: the Rocket.Chat server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    #[serde(deserialize_with = "de_url")]
    pub url: UpstreamUrl,
    #[serde(deserialize_with = "de_prefix")]
    pub path_prefix: String,
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub response_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub pool_idle_timeout: Duration,
    /// Upstream connections open at once, for the whole process and every road (pass-through,
    /// the endpoint, tunnels, the shim's own lookups); a request that finds none free waits up
    /// to `connect_timeout`, then gets a 503.
    pub max_connections: u64,
    /// PEM file of extra CA certificates trusted for an `https` upstream (besides the
    /// built-in web roots); "" for none.
    pub ca_file: String,
    pub service_account: Option<ServiceAccountConfig>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: UpstreamUrl {
                scheme: Scheme::Http,
                authority: "127.0.0.1:3000".into(),
            },
            path_prefix: String::new(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(4),
            max_connections: 1024,
            ca_file: String::new(),
            service_account: None,
        }
    }
}

/// The upstream's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A validated upstream base URL: scheme and authority only (a path belongs in `path_prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    /// `host:port` (the port made explicit).
    pub authority: String,
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority)
    }
}

/// `[upstream.service_account]`: used to read the setting (and `permissions.listAll`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceAccountConfig {
    pub user_id: String,
    pub token_env: String,
}

impl Default for ServiceAccountConfig {
    fn default() -> Self {
        ServiceAccountConfig {
            user_id: String::new(),
            token_env: "ROCKETCHAT_SHIM_SERVICE_TOKEN".into(),
        }
    }
}

/// `policy.dm_history_endpoint`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DmHistoryEndpoint {
    Enabled,
    Disabled,
    Upstream,
}

/// `policy.error_style`: order of checks and error bodies.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ErrorStyle {
    /// Rocket.Chat 6 and later: 401, 403 (permission), 400 (setting).
    Modern,
    /// Before 6: 401, 400 (setting), 403 (permission), with the older bodies.
    Legacy,
}

/// `policy.roles`: `"upstream"` or an explicit list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolesSource {
    Upstream,
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for RolesSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            L(Vec<String>),
        }
        match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected \"upstream\" or a list of role names"))?
        {
            Raw::S(s) if s == "upstream" => Ok(RolesSource::Upstream),
            Raw::S(s) => Err(de::Error::custom(format!(
                "expected \"upstream\" or a list of role names, got \"{s}\""
            ))),
            Raw::L(l) => {
                if l.iter().any(|r| r.trim().is_empty()) {
                    return Err(de::Error::custom("role names must not be empty"));
                }
                Ok(RolesSource::List(l))
            }
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub dm_history_endpoint: DmHistoryEndpoint,
    pub permission: String,
    pub roles: RolesSource,
    pub error_style: ErrorStyle,
    #[serde(deserialize_with = "de_duration")]
    pub identity_ttl: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub permissions_ttl: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub setting_ttl: Duration,
    pub guard_related_endpoints: bool,
    /// `X-Audit-Reason` is required on the endpoint (spec/shim.md 9.2).
    pub require_reason: bool,
    /// A regular expression the reason must match (a search); empty = any reason.
    pub reason_pattern: String,
    /// User ids or usernames whose DMs are refused to all but `protected_readers` (9.3).
    pub protected_users: Vec<String>,
    /// Room ids refused to all but `protected_readers`.
    pub protected_rooms: Vec<String>,
    /// User ids or usernames who may still read protected conversations.
    pub protected_readers: Vec<String>,
    /// How long a room's members (`rooms.adminRooms.getRoom`) are reused.
    #[serde(deserialize_with = "de_duration")]
    pub members_ttl: Duration,
    /// Distinct rooms one actor may read per sliding window (9.4); off when absent.
    pub max_rooms_per_actor: Option<RoomsWindow>,
    pub params: ParamsConfig,
}

/// `policy.max_rooms_per_actor = { rooms, per }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoomsWindow {
    pub rooms: u32,
    #[serde(deserialize_with = "de_duration")]
    pub per: Duration,
}

impl PolicyConfig {
    /// Whether any protected list is set (the members lookup then fails closed).
    pub fn any_protected(&self) -> bool {
        !self.protected_users.is_empty() || !self.protected_rooms.is_empty()
    }

    /// The compiled `reason_pattern`, `None` when empty (validated at load, so an error here
    /// means a config that was never validated).
    pub fn reason_regex(&self) -> Result<Option<regex::Regex>, String> {
        if self.reason_pattern.is_empty() {
            return Ok(None);
        }
        regex::Regex::new(&self.reason_pattern)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dm_history_endpoint: DmHistoryEndpoint::Disabled,
            permission: "view-room-administration".into(),
            roles: RolesSource::Upstream,
            error_style: ErrorStyle::Modern,
            identity_ttl: Duration::from_secs(30),
            permissions_ttl: Duration::from_secs(60),
            setting_ttl: Duration::from_secs(30),
            guard_related_endpoints: false,
            require_reason: false,
            reason_pattern: String::new(),
            protected_users: Vec::new(),
            protected_rooms: Vec::new(),
            protected_readers: Vec::new(),
            members_ttl: Duration::from_secs(60),
            max_rooms_per_actor: None,
            params: ParamsConfig::default(),
        }
    }
}

/// `policy.params.query_and_fields`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueryAndFields {
    /// Allow-listed operators only, re-serialised canonically.
    Sanitize,
    /// Either parameter present is a 400.
    Reject,
    /// Both dropped silently.
    Strip,
}

/// `[policy.params]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ParamsConfig {
    pub default_count: u64,
    pub max_count: u64,
    pub allow_unlimited_count: bool,
    pub query_and_fields: QueryAndFields,
    pub sort_fields: Vec<String>,
}

impl Default for ParamsConfig {
    fn default() -> Self {
        ParamsConfig {
            default_count: 50,
            max_count: 100,
            allow_unlimited_count: false,
            query_and_fields: QueryAndFields::Sanitize,
            sort_fields: vec!["ts".into(), "_updatedAt".into()],
        }
    }
}

/// `[cache]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "de_duration")]
    pub ttl: Duration,
    #[serde(deserialize_with = "de_size")]
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl: Duration::from_secs(5),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One GCRA budget: `requests` per `per`, with a burst of `requests`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub requests: u32,
    #[serde(deserialize_with = "de_duration")]
    pub per: Duration,
}

/// `rate_limit.backend`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    Local,
    Redis,
}

/// `rate_limit.redis.on_failure`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    Local,
    Deny,
}

/// `[rate_limit.redis]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    pub key_prefix: String,
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    pub on_failure: OnFailure,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "rocketchat-shim:".into(),
            timeout: Duration::from_millis(50),
            on_failure: OnFailure::Local,
        }
    }
}

/// `[rate_limit]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub per_user: Budget,
    pub per_ip: Budget,
    pub backend: RateLimitBackend,
    pub redis: RedisConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            per_user: Budget {
                requests: 10,
                per: Duration::from_secs(60),
            },
            per_ip: Budget {
                requests: 120,
                per: Duration::from_secs(60),
            },
            backend: RateLimitBackend::Local,
            redis: RedisConfig::default(),
        }
    }
}

/// `audit.fsync`: whether a record is on disk before the answer it records is sent.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuditFsync {
    /// `fdatasync` after every write batch (records written together share one).
    Always,
    /// Written to the OS only: survives a crash of the process, not of the machine.
    Never,
}

/// `audit.on_failure`: what the endpoint does when its record cannot be written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuditOnFailure {
    /// 503 `error-audit-unavailable`, nothing disclosed.
    Deny,
    /// The answer is sent; the failure is counted and logged.
    Allow,
}

/// `[audit]`: the trail of who read whose direct messages (spec/shim.md 9.1).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub enabled: bool,
    /// JSON Lines file, appended; relative to the working directory.
    pub path: PathBuf,
    /// Written into every record; "" means the host name.
    pub instance: String,
    pub fsync: AuditFsync,
    pub on_failure: AuditOnFailure,
    /// The file is rotated before it would grow past this.
    #[serde(deserialize_with = "de_size")]
    pub max_file_bytes: u64,
    /// Name of an environment variable holding the HMAC key; "" for plain SHA-256 links.
    pub hmac_key_env: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: false,
            path: PathBuf::from("rocketchat-shim-audit.jsonl"),
            instance: String::new(),
            fsync: AuditFsync::Always,
            on_failure: AuditOnFailure::Deny,
            max_file_bytes: 256 * 1024 * 1024,
            hmac_key_env: String::new(),
        }
    }
}

impl AuditConfig {
    /// The smallest `max_file_bytes`: room for a few records with long member lists.
    pub const MIN_FILE_BYTES: u64 = 4096;

    /// Checks the types cannot express; `(key, message)` on the first problem.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.path.as_os_str().is_empty() {
            return Err(("audit.path", "must name a file".into()));
        }
        if self.max_file_bytes < Self::MIN_FILE_BYTES {
            return Err(("audit.max_file_bytes", "must be at least 4KiB".into()));
        }
        if self.instance.chars().any(char::is_control) {
            return Err((
                "audit.instance",
                "must not contain control characters".into(),
            ));
        }
        let k = &self.hmac_key_env;
        if !k.is_empty()
            && (k.trim() != k || k.contains(['=', '\0']) || k.chars().any(char::is_whitespace))
        {
            return Err((
                "audit.hmac_key_env",
                format!("\"{k}\" is not an environment variable name"),
            ));
        }
        Ok(())
    }
}

/// Why a configuration could not be used. The message always says where and what.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Semantic checks that the types alone cannot express.
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: &str| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message: message.to_owned(),
            })
        };
        let nonzero = [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.shutdown_grace", self.server.shutdown_grace),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.response_timeout", self.upstream.response_timeout),
            (
                "upstream.pool_idle_timeout",
                self.upstream.pool_idle_timeout,
            ),
            ("policy.identity_ttl", self.policy.identity_ttl),
            ("policy.permissions_ttl", self.policy.permissions_ttl),
            ("policy.setting_ttl", self.policy.setting_ttl),
            ("policy.members_ttl", self.policy.members_ttl),
            ("cache.ttl", self.cache.ttl),
            ("rate_limit.per_user.per", self.rate_limit.per_user.per),
            ("rate_limit.per_ip.per", self.rate_limit.per_ip.per),
            ("rate_limit.redis.timeout", self.rate_limit.redis.timeout),
        ];
        for (key, d) in nonzero {
            if d.is_zero() {
                return bad(key, "must be longer than zero");
            }
        }
        if self.server.max_header_bytes < 1024 {
            return bad("server.max_header_bytes", "must be at least 1024 bytes");
        }
        if self.server.max_header_bytes > 16 * 1024 * 1024 {
            return bad("server.max_header_bytes", "must be at most 16MiB");
        }
        if self.upstream.max_connections == 0 {
            return bad("upstream.max_connections", "must be at least 1");
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1");
        }
        if let Some(tls) = &self.server.tls {
            // Whether the files load and match is checked where they are read (at start, on
            // reload and by `check`), so that a renewal can replace them without a new config.
            if tls.cert_file.as_os_str().is_empty() {
                return bad(
                    "server.tls.cert_file",
                    "must name the PEM certificate chain",
                );
            }
            if tls.key_file.as_os_str().is_empty() {
                return bad("server.tls.key_file", "must name the PEM private key");
            }
        }
        if self.rate_limit.per_user.requests == 0 {
            return bad("rate_limit.per_user.requests", "must be at least 1");
        }
        if self.rate_limit.per_ip.requests == 0 {
            return bad("rate_limit.per_ip.requests", "must be at least 1");
        }
        let p = &self.policy.params;
        if p.max_count == 0 {
            return bad("policy.params.max_count", "must be at least 1");
        }
        if p.default_count == 0 {
            return bad("policy.params.default_count", "must be at least 1");
        }
        if p.default_count > p.max_count {
            return bad(
                "policy.params.default_count",
                "must not be larger than policy.params.max_count",
            );
        }
        if p.sort_fields.is_empty() {
            return bad("policy.params.sort_fields", "must name at least one field");
        }
        if let Some(f) = p.sort_fields.iter().find(|f| !is_field_path(f)) {
            return bad(
                "policy.params.sort_fields",
                &format!("\"{f}\" is not a field path (letters, digits, '_' and '.')"),
            );
        }
        if let Err(e) = self.policy.reason_regex() {
            return bad(
                "policy.reason_pattern",
                &format!("invalid regular expression: {e}"),
            );
        }
        if let Some(w) = &self.policy.max_rooms_per_actor {
            if w.rooms == 0 {
                return bad("policy.max_rooms_per_actor.rooms", "must be at least 1");
            }
            if w.per.is_zero() {
                return bad("policy.max_rooms_per_actor.per", "must be longer than zero");
            }
        }
        if self.policy.permission.trim().is_empty() {
            return bad("policy.permission", "must not be empty");
        }
        if self.cache.enabled && self.cache.max_bytes < 4096 {
            return bad("cache.max_bytes", "must be at least 4KiB");
        }
        if self.policy.dm_history_endpoint == DmHistoryEndpoint::Upstream {
            match &self.upstream.service_account {
                Some(sa) if !sa.user_id.trim().is_empty() && !sa.token_env.trim().is_empty() => {}
                _ => {
                    return bad(
                        "policy.dm_history_endpoint",
                        "\"upstream\" needs [upstream.service_account] with user_id and token_env",
                    )
                }
            }
        }
        if !self.upstream.ca_file.is_empty() {
            if let Err(e) = std::fs::metadata(&self.upstream.ca_file) {
                return bad(
                    "upstream.ca_file",
                    &format!("cannot read \"{}\": {e}", self.upstream.ca_file),
                );
            }
        }
        if let Some(sa) = &self.upstream.service_account {
            if sa.token_env.trim().is_empty() {
                return bad(
                    "upstream.service_account.token_env",
                    "must name an environment variable",
                );
            }
        }
        if self.rate_limit.backend == RateLimitBackend::Redis {
            let u = &self.rate_limit.redis.url;
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("unix://"))
            {
                return bad(
                    "rate_limit.redis.url",
                    "must start with redis://, rediss:// or unix://",
                );
            }
        }
        if let Err((key, message)) = self.audit.check() {
            return bad(key, &message);
        }
        if let Some(admin) = self.admin.listen {
            if admin == self.server.listen && admin.port() != 0 {
                return bad("admin.listen", "must differ from server.listen");
            }
        }
        Ok(())
    }

    /// The service account's token, read from the environment variable the config names.
    pub fn service_token(&self) -> Option<(String, String)> {
        let sa = self.upstream.service_account.as_ref()?;
        let token = std::env::var(&sa.token_env).ok()?;
        if sa.user_id.is_empty() || token.is_empty() {
            return None;
        }
        Some((sa.user_id.clone(), token))
    }
}

/// Whether `s` is a dotted field path: letters, digits and `_`, segments separated by `.`.
pub fn is_field_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|seg| {
            !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Parses a duration such as `"500ms"`, `"5s"`, `"2m"`, `"1h"` or `"1h 30m"` (`humantime`;
/// a unit is required, so a bare `"5"` is refused rather than guessed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    humantime::parse_duration(s).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => format!("\"{s}\" is out of range"),
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("\"{s}\": unknown unit \"{unit}\" (use ms, s, m, h or d)")
        }
        humantime::DurationError::NumberExpected(_)
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("\"{s}\" has no unit: write e.g. \"500ms\", \"5s\" or \"2m\"")
        }
        _ => format!("\"{s}\" is not a duration: write e.g. \"500ms\", \"5s\" or \"2m\""),
    })
}

/// Parses a size: plain bytes (`"1048576"`) or a number and a unit (`"64MiB"`, `"512KiB"`,
/// `"1GiB"`, `"100kB"`; `bytesize`, binary and decimal units). Sizes past `u64` are refused.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() || !t.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "\"{s}\" is not a size: write bytes or e.g. \"64MiB\", \"512KiB\""
        ));
    }
    let size: bytesize::ByteSize = t
        .parse()
        .map_err(|_| format!("\"{s}\": unknown unit (use B, KiB, MiB, GiB, kB, MB or GB)"))?;
    // bytesize computes in floating point and saturates: refuse what does not fit exactly.
    let digits: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
    match digits.parse::<u64>() {
        Ok(n) if size.as_u64() != u64::MAX && size.as_u64() >= n => Ok(size.as_u64()),
        _ => Err(format!("\"{s}\" is out of range")),
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d).map_err(|_| {
        de::Error::custom("expected a duration string such as \"500ms\", \"5s\" or \"2m\"")
    })?;
    parse_duration(&s).map_err(de::Error::custom)
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(i64),
        S(String),
    }
    match Raw::deserialize(d)
        .map_err(|_| de::Error::custom("expected a size: bytes, or a string such as \"64MiB\""))?
    {
        Raw::N(n) if n < 0 => Err(de::Error::custom("a size cannot be negative")),
        Raw::N(n) => Ok(n as u64),
        Raw::S(s) => parse_size(&s).map_err(de::Error::custom),
    }
}

fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    de::Error::custom(format!(
                        "\"{s}\" is not a CIDR such as \"10.0.0.0/8\" or an IP address"
                    ))
                })
        })
        .collect()
}

fn de_opt_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "\"{s}\" is not an address such as \"127.0.0.1:9090\" (or \"\" to turn it off)"
        ))
    })
}

fn de_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let t = s.trim_end_matches('/');
    if t.is_empty() {
        return Ok(String::new());
    }
    if !t.starts_with('/') {
        return Err(de::Error::custom(format!(
            "\"{s}\" must start with '/', e.g. \"/chat\""
        )));
    }
    if t.contains(['?', '#', '%', '\\', ' '])
        || t.split('/')
            .skip(1)
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(de::Error::custom(format!(
            "\"{s}\" must be a plain path such as \"/chat\""
        )));
    }
    Ok(t.to_owned())
}

/// Parses `http(s)://host[:port]`, with at most a `/` after the authority.
pub fn parse_upstream_url(s: &str) -> Result<UpstreamUrl, String> {
    let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = s.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        return Err(format!(
            "\"{s}\" is not an http:// or https:// URL such as \"http://127.0.0.1:3000\""
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "\"{s}\" must be scheme://host[:port] only; put a sub-path in upstream.path_prefix"
        ));
    }
    let uri: http::uri::Authority = authority
        .parse()
        .map_err(|_| format!("\"{s}\": \"{authority}\" is not a valid host[:port]"))?;
    let port = uri.port_u16().unwrap_or(match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    });
    Ok(UpstreamUrl {
        scheme,
        authority: format!("{}:{}", uri.host(), port),
    })
}

fn de_url<'de, D: Deserializer<'de>>(d: D) -> Result<UpstreamUrl, D::Error> {
    let s = String::deserialize(d)?;
    parse_upstream_url(&s).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").expect("defaults");
        assert_eq!(c, Config::default());
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.cache.max_bytes, 64 << 20);
    }

    #[test]
    fn the_root_config_toml_parses() {
        let text = include_str!("../config.toml");
        let c = parse(text).expect("root config.toml");
        assert_eq!(c.upstream.url.to_string(), "http://127.0.0.1:3000");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("12 bananas").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let e = err("[server]\nlisten = \"127.0.0.1:1\"\nlisten_typo = 3\n");
        assert!(e.starts_with("test.toml:3:1:"), "{e}");
        assert!(e.contains("listen_typo"), "{e}");
    }

    #[test]
    fn unknown_section_is_refused() {
        let e = err("[sever]\nlisten = \"x\"\n");
        assert!(e.starts_with("test.toml:1:"), "{e}");
    }

    #[test]
    fn bad_values_name_their_line() {
        let e = err("[cache]\nttl = \"5 parsecs\"\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        assert!(e.contains("unknown unit"), "{e}");
        let e = err("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        assert!(e.contains("CIDR"), "{e}");
        let e = err("[upstream]\nurl = \"ftp://x\"\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        let e = err("[rate_limit]\nper_user = { requests = -1, per = \"1s\" }\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        let e = err("[policy]\nerror_style = \"ancient\"\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        let e = err("[policy]\nroles = \"everyone\"\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        let e = err("[cache]\nmax_bytes = -5\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        let e = err("[server]\nlisten = \"nowhere\"\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        let e = err("[server]\nmax_connections = \"many\"\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        let e = err("[server\n");
        assert!(e.starts_with("test.toml:1:"), "{e}");
    }

    #[test]
    fn access_rule_keys_parse_and_validate() {
        let c = parse(
            "[policy]\nrequire_reason = true\nreason_pattern = \"^(INC|CASE)-[0-9]+\"\nprotected_users = [\"ceo\"]\nprotected_rooms = [\"r1\"]\nprotected_readers = [\"wc\"]\nmembers_ttl = \"5m\"\nmax_rooms_per_actor = { rooms = 20, per = \"1h\" }\n",
        )
        .expect("valid");
        assert!(c.policy.require_reason && c.policy.any_protected());
        assert_eq!(c.policy.members_ttl, Duration::from_secs(300));
        assert_eq!(
            c.policy.max_rooms_per_actor,
            Some(RoomsWindow {
                rooms: 20,
                per: Duration::from_secs(3600)
            })
        );
        let e = err("[policy]\nreason_pattern = \"(INC\"\n");
        assert!(
            e.starts_with("test.toml: policy.reason_pattern: invalid regular expression"),
            "{e}"
        );
        let e = err("[policy]\nmembers_ttl = \"0s\"\n");
        assert_eq!(e, "test.toml: policy.members_ttl: must be longer than zero");
        let e = err("[policy]\nmax_rooms_per_actor = { rooms = 0, per = \"1h\" }\n");
        assert_eq!(
            e,
            "test.toml: policy.max_rooms_per_actor.rooms: must be at least 1"
        );
    }

    #[test]
    fn zero_limits_name_the_key() {
        let e = err("[rate_limit]\nper_user = { requests = 0, per = \"1s\" }\n");
        assert_eq!(
            e,
            "test.toml: rate_limit.per_user.requests: must be at least 1"
        );
        let e = err("[cache]\nttl = \"0s\"\n");
        assert_eq!(e, "test.toml: cache.ttl: must be longer than zero");
        let e = err("[server]\nmax_connections = 0\n");
        assert_eq!(e, "test.toml: server.max_connections: must be at least 1");
        let e = err("[policy.params]\nmax_count = 0\n");
        assert_eq!(e, "test.toml: policy.params.max_count: must be at least 1");
        let e = err("[policy.params]\ndefault_count = 500\n");
        assert!(e.contains("policy.params.default_count"), "{e}");
    }

    #[test]
    fn upstream_setting_needs_a_service_account() {
        let e = err("[policy]\ndm_history_endpoint = \"upstream\"\n");
        assert!(e.contains("service_account"), "{e}");
        let c = parse(
            "[policy]\ndm_history_endpoint = \"upstream\"\n[upstream.service_account]\nuser_id = \"svc\"\n",
        )
        .expect("valid");
        assert_eq!(
            c.upstream.service_account.map(|s| s.token_env),
            Some("ROCKETCHAT_SHIM_SERVICE_TOKEN".to_string())
        );
    }

    #[test]
    fn urls_prefixes_and_roles() {
        let c = parse(
            "[upstream]\nurl = \"https://chat.example\"\npath_prefix = \"/chat/\"\n[policy]\nroles = [\"admin\", \"auditor\"]\n",
        )
        .expect("valid");
        assert_eq!(c.upstream.url.to_string(), "https://chat.example:443");
        assert_eq!(c.upstream.path_prefix, "/chat");
        assert_eq!(
            c.policy.roles,
            RolesSource::List(vec!["admin".into(), "auditor".into()])
        );
        assert!(err("[upstream]\nurl = \"http://h/sub\"\n").contains("path_prefix"));
        assert!(err("[upstream]\npath_prefix = \"chat\"\n").contains("must start with '/'"));
        let c = parse("[admin]\nlisten = \"\"\n").expect("valid");
        assert_eq!(c.admin.listen, None);
    }

    #[test]
    fn trusted_proxies_accept_cidrs_and_addresses() {
        let c = parse("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\", \"192.168.1.7\"]\n")
            .expect("valid");
        assert_eq!(c.server.trusted_proxies.len(), 3);
    }
}
