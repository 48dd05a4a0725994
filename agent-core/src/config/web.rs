//! Web config (TLS, basic auth) for the HTTP endpoints (agent-user's `serve/http`).
//!
//! The file format is the Prometheus exporter-toolkit one (`--web.config.file`), so operators
//! reuse what they already write for node_exporter
//! (<https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md>):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt         # or `cert:` with the PEM inline; paths are relative to this file
//!   key_file: server.key          # or `key:`
//!   client_auth_type: RequireAndVerifyClientCert  # NoClientCert (default), VerifyClientCertIfGiven
//!   client_ca_file: clients.crt   # or `client_ca:`; required by the two verifying types
//!   min_version: TLS12            # TLS12 (default) or TLS13; `max_version` likewise (default TLS13)
//! http_server_config:
//!   headers: { Strict-Transport-Security: max-age=31536000 }
//! basic_auth_users:
//!   prometheus: $2y$10$...        # a bcrypt hash, e.g. from `htpasswd -nbB prometheus PASSWORD`
//! ```
//!
//! Keys the exporter-toolkit knows but refusal-agent does not implement (`cipher_suites`,
//! `curve_preferences`, `prefer_server_cipher_suites`, `client_allowed_sans`, TLS 1.0/1.1 and the
//! client auth types that accept unverified certificates) are refused by name instead of being
//! ignored: a security setting is never silently dropped. Unknown keys are refused too.
//!
//! [`parse`] is pure (it is what the fuzz target drives); [`load`] also reads the PEM files and
//! builds the rustls configuration, so a config that loads is one that serves.
use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

use base64::Engine as _;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::{Deserialize, Deserializer, de};

/// Realm of the `WWW-Authenticate` challenge.
pub const REALM: &str = "refusal-agent";

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("web config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("web config file {path}: {problem}")]
    Invalid { path: String, problem: Problem },
}

/// What is wrong with a web config, and under which key (dotted, e.g.
/// `tls_server_config.key_file`). YAML and type errors carry the key in their message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "`{key}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: Some(key.into()),
        message: message.into(),
    }
}

/// A parsed, validated web config. The default is plain HTTP without authentication.
#[derive(Clone, Debug, Default)]
pub struct WebConfig {
    pub tls: Option<TlsConfig>,
    /// User name → bcrypt hash. Empty: no authentication.
    pub basic_auth_users: BTreeMap<String, String>,
    /// Extra response headers (`http_server_config.headers`), names as written.
    pub headers: Vec<(String, String)>,
    /// The config file and every PEM file it names: what a reload watches.
    pub files: Vec<PathBuf>,
    /// Built by [`load`] (never by [`parse`]).
    server: Option<Arc<ServerConfig>>,
}

impl WebConfig {
    /// The rustls configuration to serve with, when TLS is on (after [`load`]).
    pub fn tls_server_config(&self) -> Option<Arc<ServerConfig>> {
        self.server.clone()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub client_ca: Option<Pem>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// Where PEM data comes from: a file (`*_file`, resolved against the config file's directory)
/// or inline text.
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(p) => f.debug_tuple("File").field(p).finish(),
            // May be a private key.
            Pem::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum ClientAuth {
    #[default]
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    #[serde(rename = "TLS10")]
    Tls10,
    #[serde(rename = "TLS11")]
    Tls11,
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

// ---- the file as written ----

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    http_server_config: Option<HttpFile>,
    #[serde(default, deserialize_with = "unique_users")]
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<String>,
    cert: Option<String>,
    key_file: Option<String>,
    key: Option<String>,
    client_auth_type: Option<ClientAuth>,
    client_ca_file: Option<String>,
    client_ca: Option<String>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
    // exporter-toolkit keys that are refused by name (see the module doc).
    cipher_suites: Option<de::IgnoredAny>,
    curve_preferences: Option<de::IgnoredAny>,
    prefer_server_cipher_suites: Option<de::IgnoredAny>,
    client_allowed_sans: Option<de::IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// Accepted for compatibility; refusal-agent serves HTTP/1.1 either way.
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// The headers exporter-toolkit lets a config set, with the values it allows (`None`: any).
const HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Content-Security-Policy", None),
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
];

/// A map whose duplicate keys are an error: YAML would otherwise keep the last one silently.
fn unique_users<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Users;
    impl<'de> de::Visitor<'de> for Users {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of user name to bcrypt hash")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut users = BTreeMap::new();
            while let Some((user, hash)) = map.next_entry::<String, Option<String>>()? {
                if users.contains_key(&user) {
                    return Err(de::Error::custom(format_args!("user `{user}` is listed twice")));
                }
                users.insert(user, hash.unwrap_or_default());
            }
            Ok(Some(users))
        }
    }
    d.deserialize_option(Users)
}

/// Parses and validates a web config. `dir` resolves relative `*_file` paths (the config file's
/// directory). Pure: reads no file.
pub fn parse(text: &str, dir: &Path) -> Result<WebConfig, Problem> {
    let file: Option<FileConfig> = serde_yaml_ng::from_str(text).map_err(|e| Problem {
        key: None,
        message: e.to_string(),
    })?;
    let file = file.unwrap_or_default();
    let mut cfg = WebConfig::default();

    if let Some(tls) = file.tls_server_config {
        cfg.tls = tls_config(tls, dir)?;
    }
    for (user, hash) in file.basic_auth_users.unwrap_or_default() {
        let key = format!("basic_auth_users.{user}");
        if user.is_empty() {
            return Err(problem("basic_auth_users", "an empty user name cannot log in"));
        }
        if user.contains(':') || user.chars().any(char::is_control) {
            return Err(problem(
                key,
                "a user name cannot contain `:` or control characters (HTTP basic auth)",
            ));
        }
        let cost = match hash.parse::<bcrypt::HashParts>() {
            Ok(parts) => parts.get_cost(),
            Err(e) => {
                return Err(problem(
                    key,
                    format!(
                        "not a bcrypt hash ({e}): expected `$2y$10$` and 53 more characters, as \
                         `htpasswd -nbB USER PASSWORD` prints"
                    ),
                ));
            }
        };
        if !(4..=31).contains(&cost) {
            return Err(problem(key, format!("bcrypt cost {cost} is outside 4..=31")));
        }
        cfg.basic_auth_users.insert(user, hash);
    }
    if let Some(http) = file.http_server_config {
        for (name, value) in http.headers.unwrap_or_default() {
            let key = format!("http_server_config.headers.{name}");
            let Some((_, allowed)) = HEADERS.iter().find(|(n, _)| *n == name) else {
                let names: Vec<&str> = HEADERS.iter().map(|(n, _)| *n).collect();
                return Err(problem(
                    key,
                    format!("this header cannot be configured (accepted: {})", names.join(", ")),
                ));
            };
            if let Some(allowed) = allowed
                && !allowed.contains(&value.as_str())
            {
                return Err(problem(key, format!("expected one of {allowed:?}, got {value:?}")));
            }
            if value.is_empty() || !value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
                return Err(problem(key, "the value must be non-empty printable ASCII"));
            }
            cfg.headers.push((name, value));
        }
    }
    Ok(cfg)
}

fn tls_config(t: TlsFile, dir: &Path) -> Result<Option<TlsConfig>, Problem> {
    let k = |name: &str| format!("tls_server_config.{name}");
    for (name, set, why) in [
        (
            "cipher_suites",
            t.cipher_suites.is_some(),
            "rustls offers only modern AEAD suites",
        ),
        (
            "curve_preferences",
            t.curve_preferences.is_some(),
            "rustls picks the key exchange group",
        ),
        (
            "prefer_server_cipher_suites",
            t.prefer_server_cipher_suites.is_some(),
            "rustls decides the order",
        ),
        (
            "client_allowed_sans",
            t.client_allowed_sans.is_some(),
            "restrict clients with a dedicated client CA instead",
        ),
    ] {
        if set {
            return Err(problem(
                k(name),
                format!("not supported by refusal-agent ({why}); remove it"),
            ));
        }
    }
    let source = |file: Option<String>, inline: Option<String>, file_key: &str, inline_key: &str| match (file, inline) {
        (Some(_), Some(_)) => Err(problem(
            k(file_key),
            format!("set either `{file_key}` or `{inline_key}`, not both"),
        )),
        (Some(f), None) if f.is_empty() => Ok(None),
        (Some(f), None) => Ok(Some(Pem::File(dir.join(f)))),
        (None, Some(pem)) if pem.is_empty() => Ok(None),
        (None, Some(pem)) => Ok(Some(Pem::Inline(pem))),
        (None, None) => Ok(None),
    };
    let cert = source(t.cert_file, t.cert, "cert_file", "cert")?;
    let key = source(t.key_file, t.key, "key_file", "key")?;
    let client_ca = source(t.client_ca_file, t.client_ca, "client_ca_file", "client_ca")?;
    let client_auth = t.client_auth_type.unwrap_or_default();
    let min_version = t.min_version.unwrap_or(TlsVersion::Tls12);
    let max_version = t.max_version.unwrap_or(TlsVersion::Tls13);
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) if client_ca.is_none() && t.client_auth_type.is_none() && t.min_version.is_none() => {
            // `tls_server_config: {}`: plain HTTP, as exporter-toolkit does.
            return Ok(None);
        }
        (_, None) => return Err(problem(k("key_file"), "missing: TLS needs `key_file` (or `key`)")),
        (None, _) => return Err(problem(k("cert_file"), "missing: TLS needs `cert_file` (or `cert`)")),
    };
    match client_auth {
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
            return Err(problem(
                k("client_auth_type"),
                format!(
                    "{client_auth:?} accepts client certificates without verifying them and is not supported; \
                     use VerifyClientCertIfGiven or RequireAndVerifyClientCert with `client_ca_file`"
                ),
            ));
        }
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert if client_ca.is_none() => {
            return Err(problem(
                k("client_ca_file"),
                format!("missing: client_auth_type {client_auth:?} verifies client certificates against it"),
            ));
        }
        ClientAuth::NoClientCert if client_ca.is_some() => {
            return Err(problem(
                k("client_auth_type"),
                "a client CA is configured but client_auth_type is NoClientCert: set VerifyClientCertIfGiven or \
                 RequireAndVerifyClientCert",
            ));
        }
        _ => {}
    }
    for (name, v) in [("min_version", min_version), ("max_version", max_version)] {
        if v < TlsVersion::Tls12 {
            return Err(problem(
                k(name),
                "TLS10 and TLS11 are not supported: use TLS12 or TLS13",
            ));
        }
    }
    if min_version > max_version {
        return Err(problem(k("min_version"), "is above `max_version`"));
    }
    Ok(Some(TlsConfig {
        cert,
        key,
        client_auth,
        client_ca,
        min_version,
        max_version,
    }))
}

/// Reads, parses and validates `path`, then reads the PEM files it names and builds the TLS
/// configuration: every error names the key (and the file) at fault.
pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let invalid = |problem| WebConfigError::Invalid {
        path: shown.clone(),
        problem,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut cfg = parse(&text, dir).map_err(invalid)?;
    cfg.files.push(path.to_path_buf());
    if let Some(tls) = &cfg.tls {
        for pem in [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Pem::File(p) = pem {
                cfg.files.push(p.clone());
            }
        }
        cfg.server = Some(Arc::new(server_config(tls).map_err(invalid)?));
    }
    Ok(cfg)
}

fn pem_key(pem: &Pem, file_key: &str, inline_key: &str) -> String {
    let name = if matches!(pem, Pem::File(_)) {
        file_key
    } else {
        inline_key
    };
    format!("tls_server_config.{name}")
}

fn pem_bytes(pem: &Pem, key: &str) -> Result<Vec<u8>, Problem> {
    match pem {
        Pem::File(p) => std::fs::read(p).map_err(|e| problem(key, format!("reading {}: {e}", p.display()))),
        Pem::Inline(text) => Ok(text.as_bytes().to_vec()),
    }
}

fn certificates(pem: &Pem, key: &str) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let bytes = pem_bytes(pem, key)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(key, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(problem(key, "no PEM certificate (-----BEGIN CERTIFICATE-----) found"));
    }
    Ok(certs)
}

/// The rustls server configuration for `tls` (ring provider).
fn server_config(tls: &TlsConfig) -> Result<ServerConfig, Problem> {
    let cert_key = pem_key(&tls.cert, "cert_file", "cert");
    let key_key = pem_key(&tls.key, "key_file", "key");
    let certs = certificates(&tls.cert, &cert_key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem_bytes(&tls.key, &key_key)?).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => problem(
            &key_key,
            "no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC) found",
        ),
        e => problem(&key_key, format!("bad PEM private key: {e}")),
    })?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| problem("tls_server_config.min_version", e.to_string()))?;
    let builder = match (tls.client_auth, &tls.client_ca) {
        (ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert, Some(ca)) => {
            let ca_key = pem_key(ca, "client_ca_file", "client_ca");
            let mut roots = RootCertStore::empty();
            for c in certificates(ca, &ca_key)? {
                roots
                    .add(c)
                    .map_err(|e| problem(&ca_key, format!("not a usable CA certificate: {e}")))?;
            }
            let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if tls.client_auth == ClientAuth::VerifyClientCertIfGiven {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| problem(&ca_key, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        problem(
            &key_key,
            format!("cannot serve with this key and the certificate in `{cert_key}`: {e}"),
        )
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

// ---- basic auth ----

/// `user`, `password` from an `Authorization: Basic …` header value; `None` when it is not one.
/// The password is bytes: bcrypt hashes bytes, and clients need not send UTF-8.
pub fn parse_basic_authorization(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii_start())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// Most cached successful logins kept (the cache is cleared when full): only right passwords
/// enter it, so its size is bounded by the operator's users, not by an attacker.
const CACHE_ENTRIES: usize = 1024;

/// Remembers successful bcrypt verifications so a scrape every second does not cost a bcrypt
/// (50–250 ms of CPU) each time. An entry is an HMAC, under a key drawn at start, of (user,
/// hash, password): no password is kept, and a changed hash (a reloaded config) misses.
pub struct AuthCache {
    key: ring::hmac::Key,
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl Default for AuthCache {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthCache {
    pub fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).expect("system randomness for the HMAC key");
        Self {
            key,
            verified: Mutex::new(HashSet::new()),
        }
    }

    fn tag(&self, user: &str, hash: &str, password: &[u8]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        for part in [user.as_bytes(), hash.as_bytes(), password] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        let mut out = [0; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The result of checking credentials against `basic_auth_users`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Not in the cache: run [`verify_slow`] (a bcrypt) off the async threads.
    NeedsBcrypt,
}

/// Fast path: a cached success. Anything else, unknown users included, goes through
/// [`verify_slow`], so timing does not tell which user names exist.
pub fn verify_cached(users: &BTreeMap<String, String>, cache: &AuthCache, user: &str, password: &[u8]) -> Verdict {
    match users.get(user) {
        Some(hash) if cache.lock().contains(&cache.tag(user, hash, password)) => Verdict::Allowed,
        _ => Verdict::NeedsBcrypt,
    }
}

/// Slow path: one bcrypt; a success is cached.
pub fn verify_slow(users: &BTreeMap<String, String>, cache: &AuthCache, user: &str, password: &[u8]) -> Verdict {
    let Some(hash) = users.get(user) else {
        // Same work as a real check, against a hash of the same cost as the first user's.
        let cost = users.values().next().and_then(|h| h.parse::<bcrypt::HashParts>().ok());
        let _ = bcrypt::verify(password, dummy_hash(cost.map_or(10, |h| h.get_cost())));
        return Verdict::Denied;
    };
    if bcrypt::verify(password, hash).unwrap_or(false) {
        let tag = cache.tag(user, hash, password);
        let mut verified = cache.lock();
        if verified.len() >= CACHE_ENTRIES {
            verified.clear();
        }
        verified.insert(tag);
        Verdict::Allowed
    } else {
        Verdict::Denied
    }
}

fn dummy_hash(cost: u32) -> &'static str {
    static DUMMY: OnceLock<Mutex<BTreeMap<u32, &'static str>>> = OnceLock::new();
    let mut map = DUMMY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(cost).or_insert_with(|| {
        let hash = bcrypt::hash_with_salt(b"refusal-agent: no such user", cost, [7; 16])
            .map(|h| h.format_for_version(bcrypt::Version::TwoY))
            .unwrap_or_default();
        Box::leak(hash.into_boxed_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, Path::new("/etc/refusal-agent")).unwrap_err().to_string()
    }

    /// Parses as bcrypt (never verified here).
    const HASH: &str = "$2y$12$L6Bc/AlTQHyd9liGgGEZyOFLPHNgyxeEPfgYfBCVxJ7JIlwxyVU3u";

    #[test]
    fn empty_and_absent_sections_are_plain_http() {
        for text in [
            "",
            "# nothing\n",
            "tls_server_config:\n",
            "tls_server_config: {}\n",
            "basic_auth_users:\n",
        ] {
            let c = parse(text, Path::new("/")).unwrap();
            assert!(c.tls.is_none() && c.basic_auth_users.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn full_config_parses_with_relative_paths() {
        let text = format!(
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: /abs/server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\n\
             http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n\
             basic_auth_users:\n  prometheus: '{HASH}'\n"
        );
        let c = parse(&text, Path::new("/etc/ra")).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, Pem::File("/etc/ra/tls/server.crt".into()));
        assert_eq!(tls.key, Pem::File("/abs/server.key".into()));
        assert_eq!(tls.client_ca, Some(Pem::File("/etc/ra/ca.crt".into())));
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(
            (tls.min_version, tls.max_version),
            (TlsVersion::Tls13, TlsVersion::Tls13)
        );
        assert_eq!(c.basic_auth_users.get("prometheus").map(String::as_str), Some(HASH));
        assert_eq!(c.headers, vec![("X-Frame-Options".to_string(), "deny".to_string())]);
    }

    #[test]
    fn every_mistake_names_its_key() {
        let twice = format!("basic_auth_users:\n  alice: '{HASH}'\n  alice: '{HASH}'\n");
        let colon = format!("basic_auth_users:\n  'a:b': '{HASH}'\n");
        let cases: &[(&str, &str)] = &[
            (
                "tls_server_cofig:\n  cert_file: a\n",
                "unknown field `tls_server_cofig`",
            ),
            (
                "tls_server_config:\n  cert_fiel: a\n",
                "tls_server_config: unknown field `cert_fiel`",
            ),
            (
                "tls_server_config:\n  cert_file: a\n",
                "`tls_server_config.key_file`: missing",
            ),
            (
                "tls_server_config:\n  key_file: a\n",
                "`tls_server_config.cert_file`: missing",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS11\n",
                "`tls_server_config.min_version`: TLS10 and TLS11 are not supported",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n",
                "tls_server_config.min_version: unknown variant `TLS14`",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n",
                "`tls_server_config.min_version`: is above `max_version`",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
                "`tls_server_config.client_ca_file`: missing",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
                "`tls_server_config.client_auth_type`: a client CA is configured",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
                "`tls_server_config.client_auth_type`: RequireAnyClientCert accepts client certificates without",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n",
                "tls_server_config.client_auth_type: unknown variant `Sometimes`",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
                "`tls_server_config.cipher_suites`: not supported by refusal-agent",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  cert: b\n  key_file: c\n",
                "`tls_server_config.cert_file`: set either `cert_file` or `cert`, not both",
            ),
            (
                "basic_auth_users:\n  alice: hunter2\n",
                "`basic_auth_users.alice`: not a bcrypt hash",
            ),
            (
                "basic_auth_users:\n  alice:\n",
                "`basic_auth_users.alice`: not a bcrypt hash",
            ),
            (
                "basic_auth_users: [alice]\n",
                "basic_auth_users: invalid type: sequence",
            ),
            (&twice, "user `alice` is listed twice"),
            (&colon, "`basic_auth_users.a:b`: a user name cannot contain `:`"),
            (
                "http_server_config:\n  headers:\n    Server: nginx\n",
                "`http_server_config.headers.Server`: this header cannot be configured",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
                "`http_server_config.headers.X-Frame-Options`: expected one of",
            ),
            (
                "http_server_config:\n  http3: true\n",
                "http_server_config: unknown field `http3`",
            ),
            ("- a\n- b\n", "invalid type: sequence"),
            (
                "tls_server_config:\n\tcert_file: a\n",
                "cannot start any token at line 2 column 1",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e:?} does not contain {want:?}");
        }
    }

    #[test]
    fn load_names_the_file_and_the_pem_key() {
        let dir = std::env::temp_dir().join(format!("refusal-webconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("web.yml");
        std::fs::write(
            &path,
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
        )
        .unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("web config file {}: ", path.display())), "{e}");
        assert!(
            e.contains("`tls_server_config.cert_file`: reading ") && e.contains("nope.crt"),
            "{e}"
        );
        std::fs::write(dir.join("empty.crt"), "not pem\n").unwrap();
        std::fs::write(
            &path,
            "tls_server_config:\n  cert_file: empty.crt\n  key_file: nope.key\n",
        )
        .unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("`tls_server_config.cert_file`: no PEM certificate"), "{e}");
        let e = load(&dir.join("missing.yml")).unwrap_err().to_string();
        assert!(e.contains("missing.yml") && e.contains("No such file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn authorization_header() {
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let header = |s: &[u8]| format!("Basic {}", b64(s)).into_bytes();
        assert_eq!(
            parse_basic_authorization(&header(b"alice:pa:ss")),
            Some(("alice".into(), b"pa:ss".to_vec()))
        );
        assert_eq!(
            parse_basic_authorization(format!("bAsIc  {}", b64(b"a:")).as_bytes()),
            Some(("a".into(), vec![]))
        );
        assert_eq!(
            parse_basic_authorization(&header(b"bob:\xff\xfe")),
            Some(("bob".into(), vec![0xff, 0xfe]))
        );
        for bad in [
            b"".to_vec(),
            b"Basic".to_vec(),
            b"Bearer abc".to_vec(),
            b"Basic !!!".to_vec(),
            header(b"no colon"),
            header(b"\xff:x"),
        ] {
            assert_eq!(parse_basic_authorization(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bcrypt_successes_are_cached_failures_are_not() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = BTreeMap::from([("alice".to_string(), hash.clone())]);
        let cache = AuthCache::new();
        assert_eq!(verify_cached(&users, &cache, "alice", b"s3cret"), Verdict::NeedsBcrypt);
        assert_eq!(verify_slow(&users, &cache, "alice", b"wrong"), Verdict::Denied);
        assert_eq!(verify_cached(&users, &cache, "alice", b"wrong"), Verdict::NeedsBcrypt);
        assert_eq!(verify_slow(&users, &cache, "alice", b"s3cret"), Verdict::Allowed);
        assert_eq!(verify_cached(&users, &cache, "alice", b"s3cret"), Verdict::Allowed);
        assert_eq!(verify_cached(&users, &cache, "alice", b"s3cret!"), Verdict::NeedsBcrypt);
        assert_eq!(verify_slow(&users, &cache, "mallory", b"s3cret"), Verdict::Denied);
        // A new hash for the same user (a reloaded config) does not ride on the old entry.
        let users2 = BTreeMap::from([("alice".to_string(), bcrypt::hash("other", 4).unwrap())]);
        assert_eq!(verify_cached(&users2, &cache, "alice", b"s3cret"), Verdict::NeedsBcrypt);
        assert_eq!(verify_slow(&users2, &cache, "alice", b"s3cret"), Verdict::Denied);
        assert_eq!(cache.lock().len(), 1);
    }
}
