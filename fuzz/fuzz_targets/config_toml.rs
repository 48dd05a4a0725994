//! The daemon's TOML config file: parse, validate, derive the verdict thresholds, and the
//! human duration syntax (`90s`, `1h30m`) its values use.
#![no_main]

use agent_core::config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = config::Config::from_toml(text)
        && cfg.validate().is_ok()
    {
        let _ = cfg.thresholds();
    }
    // Every line as a duration too, the grammar of half the keys.
    for line in text.lines().take(16) {
        if let Ok(d) = line.parse::<config::HumanDuration>() {
            // Round trip in whole seconds when it is whole seconds.
            if d.0.subsec_nanos() == 0 {
                let again: config::HumanDuration = format!("{}s", d.0.as_secs()).parse().unwrap();
                assert_eq!(again, d);
            }
        }
    }
});
