//! `/metrics`: a collection from the kernel maps, written by `agent_core::serve::scrape` into a
//! buffer reused from one scrape to the next.
use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

use agent_core::serve::{self, exposition::Text};

use crate::{collect::collector::CollectError, serve::state::State};

/// Size of the last exposition: a new buffer is made this big from the start, instead of grown
/// (and copied) from empty.
static LAST_SIZE: AtomicUsize = AtomicUsize::new(0);
/// The buffer of the last exposition sent, back for the next one: megabytes at 10,000 series,
/// allocated and faulted in once rather than on every scrape.
static SPARE: Mutex<String> = Mutex::new(String::new());

/// A written exposition, handed to the HTTP layer without a copy. Its buffer returns to
/// [`SPARE`] once the last response sending it is done.
#[derive(Debug)]
pub struct Exposition(String);

impl AsRef<[u8]> for Exposition {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Drop for Exposition {
    fn drop(&mut self) {
        let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
        // Of two buffers (a scrape while another's answer was still being sent), keep the larger.
        if self.0.capacity() > spare.capacity() {
            std::mem::swap(&mut *spare, &mut self.0);
            spare.clear();
        }
    }
}

/// Collects from the kernel maps and writes the whole exposition; `http_rejected` is the HTTP
/// server's own count.
pub fn scrape(state: &State, http_rejected: u64) -> Result<Exposition, CollectError> {
    let snap = state.snapshot()?;
    let mut buffer = std::mem::take(&mut *SPARE.lock().unwrap_or_else(|p| p.into_inner()));
    let last = LAST_SIZE.load(Ordering::Relaxed);
    buffer.reserve(last + last / 16);
    let mut out = Text::new(buffer);
    let mut series = state.series();
    let drops = serve::agent::UserDrops {
        http_rejected,
        collections_failed: state.failed(),
        ..Default::default()
    };
    serve::scrape(&snap, &state.analysis(), &mut series, &state.info, drops, &mut out);
    let text = out.finish();
    LAST_SIZE.store(text.len(), Ordering::Relaxed);
    Ok(Exposition(text))
}
