//! A steady stream of requests and what it saw.

use super::*;

/// A steady stream of GETs from `concurrency` clients until stopped; every answer
/// is recorded, so a test can say how many failed and who served the rest.
pub struct Load {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u16, String)>>>,
    pub sent: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    /// (status, x-georouter-region or the body of a failure), in order per client.
    pub answers: Vec<(u16, String)>,
}

impl LoadReport {
    pub fn failed(&self) -> Vec<&(u16, String)> {
        self.answers.iter().filter(|(s, _)| *s != 200).collect()
    }
    pub fn served_by(&self, region: &str) -> usize {
        self.answers
            .iter()
            .filter(|(s, r)| *s == 200 && r == region)
            .count()
    }
}

impl Load {
    pub fn start(url: String, concurrency: usize) -> Load {
        let (stop, stopped) = watch::channel(false);
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks = (0..concurrency)
            .map(|_| {
                let url = url.clone();
                let stopped = stopped.clone();
                let sent = sent.clone();
                tokio::spawn(async move {
                    let client = h1_client();
                    let mut out = Vec::new();
                    while !*stopped.borrow() {
                        let r = get(&client, &url).await;
                        let region = r
                            .headers
                            .get("x-georouter-region")
                            .map(|v| v.to_str().unwrap().to_owned());
                        out.push((r.status, region.unwrap_or(r.body)));
                        sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    out
                })
            })
            .collect();
        Load { stop, tasks, sent }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` more requests were answered.
    pub async fn wait_for(&self, n: u64) {
        let target = self.sent() + n;
        eventually(&format!("{n} more requests"), || self.sent() >= target).await;
    }

    pub async fn stop(self) -> LoadReport {
        let _ = self.stop.send(true);
        let mut answers = Vec::new();
        for t in self.tasks {
            answers.extend(t.await.unwrap());
        }
        LoadReport { answers }
    }
}
