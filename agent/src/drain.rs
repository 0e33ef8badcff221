//! The one shutdown primitive. Listeners stop on `shutdown`; connection tasks finish on their
//! own or are stopped when `force` fires at the drain deadline.
use std::time::Duration;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

#[derive(Clone, Default)]
pub struct Drain {
    shutdown: CancellationToken,
    force: CancellationToken,
    tasks: TaskTracker,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires when the agent stops accepting.
    pub fn shutdown_signal(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Fires when in-flight work must stop now.
    pub fn force_signal(&self) -> CancellationToken {
        self.force.clone()
    }

    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Stops accepting, waits up to `deadline` for tasks, then forces the rest to stop.
    /// Returns how many tasks had to be forced.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let forced = self.tasks.len();
        self.force.cancel();
        // Forced tasks exit at their next await; give them a moment to log and clean up.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        forced
    }
}
