//! The web config in force (TLS, basic auth, headers), re-read when one of its files changes.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Instant, SystemTime},
};

use agent_core::config::web::{self, WebConfig};
use hyper::header::{HeaderName, HeaderValue};
use tokio_rustls::TlsAcceptor;

use crate::serve::http::RELOAD_CHECK;

/// What the web config says, ready to serve with.
pub struct Site {
    pub tls: Option<TlsAcceptor>,
    /// User → bcrypt hash; empty: no authentication.
    pub users: Arc<BTreeMap<String, String>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Site {
    fn new(cfg: &WebConfig) -> Site {
        Site {
            tls: cfg.tls_server_config().map(TlsAcceptor::from),
            users: Arc::new(cfg.basic_auth_users.clone()),
            // Validated by the parser: printable ASCII, names from a fixed list.
            headers: (cfg.headers.iter())
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
        }
    }
}

/// The web config in force, re-read when one of its files changes.
pub struct WebSource {
    path: Option<PathBuf>,
    site: Arc<Site>,
    files: Vec<PathBuf>,
    stamps: Vec<Stamp>,
    checked: Instant,
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

impl WebSource {
    pub fn new(path: Option<PathBuf>) -> Result<WebSource, web::WebConfigError> {
        let cfg = match &path {
            Some(p) => web::load(p)?,
            None => WebConfig::default(),
        };
        if path.is_some() {
            describe(&cfg);
        }
        Ok(WebSource {
            path,
            site: Arc::new(Site::new(&cfg)),
            stamps: cfg.files.iter().map(|f| stamp(f)).collect(),
            files: cfg.files,
            checked: Instant::now(),
        })
    }

    pub fn current(&mut self) -> Arc<Site> {
        if let Some(path) = &self.path
            && self.checked.elapsed() >= RELOAD_CHECK
        {
            self.checked = Instant::now();
            let stamps: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
            if stamps != self.stamps {
                // Remembered even when the load fails: retried on the next change, not logged
                // every few seconds.
                self.stamps = stamps;
                match web::load(path) {
                    Ok(cfg) => {
                        tracing::info!(file = %path.display(), "web config changed: reloaded");
                        describe(&cfg);
                        self.site = Arc::new(Site::new(&cfg));
                        self.stamps = cfg.files.iter().map(|f| stamp(f)).collect();
                        self.files = cfg.files;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "web config changed but does not load: keeping the previous one")
                    }
                }
            }
        }
        self.site.clone()
    }
}

fn describe(cfg: &WebConfig) {
    let tls = cfg.tls.as_ref().map(|t| format!("{:?}", t.client_auth));
    tracing::info!(
        tls = tls.as_deref().unwrap_or("off"),
        basic_auth_users = cfg.basic_auth_users.len(),
        "web config"
    );
    if cfg.tls.is_none() && !cfg.basic_auth_users.is_empty() {
        tracing::warn!("basic auth without TLS: passwords cross the network in clear text");
    }
}
