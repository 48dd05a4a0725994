//! `/api/targets`, as JSON (`agent_core::serve::views`).
use crate::{collect::clock::realtime_offset, serve::state::State};

pub fn targets_json(state: &State) -> String {
    let body = agent_core::serve::views::document(&state.analysis(), realtime_offset());
    serde_json::to_string_pretty(&body).unwrap_or_default()
}
