//! One endpoint's expensive answer computed once for every request waiting for it.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use hyper::body::Bytes;

use crate::serve::http::Compute;

/// One endpoint's expensive answer, computed once for everyone waiting. A request is answered
/// by a computation that started after it arrived (never by an older one), so coalescing never
/// serves stale data.
#[derive(Default)]
pub struct Coalesced {
    /// Held by the computation in progress, until its blocking work ends.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Requests waiting for their turn.
    waiting: AtomicUsize,
    /// When the last computation started, and what it gave, kept only while requests wait that
    /// may share it: an idle endpoint holds no answer (a scrape's is megabytes).
    last: std::sync::Mutex<Option<(Instant, Answer)>>,
}

/// Counts a request in [`Coalesced::waiting`] for as long as it lives (it may be cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A computed body (shared by every response that serves it, never copied), or why there is none.
pub type Answer = Arc<Result<Bytes, String>>;

impl Coalesced {
    pub async fn get(self: &Arc<Self>, compute: &Compute) -> Answer {
        // Counted before its arrival time is taken: a computation that starts later sees it.
        let waiting = Waiting::new(&self.waiting);
        let arrived = Instant::now();
        let turn = self.turn.clone().lock_owned().await;
        drop(waiting);
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((started, result)) = &*last
                && *started >= arrived
            {
                let result = result.clone();
                if self.waiting.load(Ordering::SeqCst) == 0 {
                    *last = None;
                }
                return result;
            }
            // Turns come in arrival order: whoever could share that answer has had it.
            *last = None;
        }
        let (this, compute) = (self.clone(), compute.clone());
        let job = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let started = Instant::now();
            let result = Arc::new(compute());
            if this.waiting.load(Ordering::SeqCst) > 0 {
                *this.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((started, result.clone()));
            }
            result
        });
        job.await.unwrap_or_else(|e| Arc::new(Err(e.to_string())))
    }
}
