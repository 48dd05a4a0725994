//! The exporter-toolkit web config (YAML) and the `Authorization: Basic` header decoder.
#![no_main]

use std::path::Path;

use agent_core::config::web as webconfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((user, password)) = webconfig::parse_basic_authorization(data) {
        assert!(!user.contains(':'));
        let _ = password;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match webconfig::parse(text, Path::new("/etc/refusal-agent")) {
        Ok(cfg) => {
            for (user, hash) in &cfg.basic_auth_users {
                assert!(!user.is_empty() && !user.contains(':'));
                assert!(hash.parse::<bcrypt::HashParts>().is_ok());
            }
            if let Some(tls) = &cfg.tls {
                assert!(tls.min_version <= tls.max_version);
            }
        }
        // Every error says what is wrong.
        Err(problem) => assert!(!problem.to_string().is_empty()),
    }
});
