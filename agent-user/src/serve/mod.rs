//! The serve stage: the state the tick and the endpoints share, `/metrics` and `/api/targets`
//! from it, and the hardened HTTP server they are handed to.
pub mod api;
pub mod http;
pub mod metrics;
pub mod state;

use std::sync::Arc;

use hyper::body::Bytes;

use self::state::State;
use crate::kernel::loader::error_chain;

/// The endpoints over `state`.
pub fn endpoints(state: &Arc<State>) -> http::Endpoints {
    let scraped = state.clone();
    let targets = state.clone();
    let ready = state.clone();
    http::Endpoints {
        metrics: Arc::new(move || {
            metrics::scrape(&scraped)
                .map(Bytes::from_owner)
                .map_err(|e| error_chain(&e))
        }),
        targets: Arc::new(move || Ok(api::targets_json(&targets).into())),
        ready: Arc::new(move || ready.is_ready()),
    }
}
