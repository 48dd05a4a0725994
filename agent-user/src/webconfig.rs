//! Web config (TLS, basic auth) for the HTTP endpoints: see `http.rs`.
