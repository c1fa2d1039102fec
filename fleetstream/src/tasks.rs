//! The long-running parts of a role, each on its own task.
//!
//! `tokio::try_join!` polls every future it joins from the one task that awaits it: under
//! `up` that put the gateway's loops, the processors, the projections and the notifier on
//! the thread that runs `main`, one at a time, while the runtime's workers served only the
//! HTTP connections. Spawned, they run in parallel on the workers.

use std::future::Future;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use tokio::task::JoinSet;

/// The tasks of one role: name and future.
#[derive(Default)]
pub(crate) struct Tasks {
    tasks: Vec<(&'static str, BoxFuture<'static, anyhow::Result<()>>)>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tasks.iter().map(|(name, _)| *name).collect();
        f.debug_struct("Tasks").field("tasks", &names).finish()
    }
}

impl Tasks {
    pub(crate) fn new() -> Tasks {
        Tasks::default()
    }

    /// Adds one part; it starts when [`Tasks::run`] is awaited.
    pub(crate) fn add<F>(mut self, name: &'static str, task: F) -> Tasks
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.push((name, task.boxed()));
        self
    }

    /// Runs every part on its own task until all have finished. The first to fail (an
    /// error or a panic) stops the others, as `try_join!` would: a half-running role is
    /// worse than none.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let mut set = JoinSet::new();
        for (name, task) in self.tasks {
            set.spawn(async move { (name, task.await) });
        }
        while let Some(joined) = set.join_next().await {
            let failure = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((name, Err(e))) => e.context(format!("{name} stopped")),
                Err(e) if e.is_panic() => anyhow::anyhow!("a task panicked: {e}"),
                Err(e) => anyhow::anyhow!("a task was cancelled: {e}"),
            };
            set.abort_all();
            while set.join_next().await.is_some() {}
            return Err(failure);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_run_in_parallel_on_the_workers() {
        // Two parts that each block their thread until the other has started: joined on
        // one task they would wait for each other forever.
        let (a_started, b_started) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let part = |mine: Arc<AtomicBool>, other: Arc<AtomicBool>| async move {
            mine.store(true, Ordering::SeqCst);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !other.load(Ordering::SeqCst) {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "the other part never ran"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        };
        Tasks::new()
            .add("a", part(a_started.clone(), b_started.clone()))
            .add("b", part(b_started, a_started))
            .run()
            .await
            .expect("both parts ran at the same time");
    }

    #[tokio::test]
    async fn the_first_failure_stops_the_others_and_names_the_part() {
        let stopped = Arc::new(AtomicBool::new(true));
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        stopped.store(false, Ordering::SeqCst);
        let guard = SetOnDrop(stopped.clone());
        let err = Tasks::new()
            .add("forever", async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok(())
            })
            .add("broken", async { anyhow::bail!("no disk") })
            .run()
            .await
            .expect_err("a part failed");
        assert_eq!(format!("{err:#}"), "broken stopped: no disk");
        assert!(stopped.load(Ordering::SeqCst), "the other part was dropped");
    }

    #[tokio::test]
    async fn a_panic_is_an_error() {
        let err = Tasks::new()
            .add("panics", async { panic!("boom") })
            .run()
            .await
            .expect_err("a part panicked");
        assert!(format!("{err:#}").contains("panicked"), "{err:#}");
    }

    #[tokio::test]
    async fn parts_that_finish_leave_the_others_running() {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        Tasks::new()
            .add("quick", async { Ok(()) })
            .add("slow", async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                d.store(true, Ordering::SeqCst);
                Ok(())
            })
            .run()
            .await
            .expect("all finished");
        assert!(done.load(Ordering::SeqCst));
    }
}
