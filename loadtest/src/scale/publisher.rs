//! The parent's publishers for `scale`: worker threads, each with one keep-alive connection
//! per API node ([`ApiConn`], the fanout publisher's), taking jobs (an all-hands publish, a
//! room publish, a send to a user) from one queue. Job j goes to API node j % k; a node that
//! refuses the connection or is gone is skipped for the next one (nodes are SIGTERMed during
//! the soak). Every job carries an `idempotency_key` and its send time in `data` (the fanout
//! publisher's [`write_data`]); a 503 or a lost answer is retried with the same key on the next
//! node (the key is the cluster's, so that is safe), after the 503's `Retry-After` (at most
//! 1 s) or at once the first time an answer was lost. Every acknowledged `(seq, epoch)` is kept
//! as its stream's top.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cli::{Payload, Target};
use crate::publish::{write_data, Answer, ApiConn, Lost};
use crate::sys::now_ns;

/// Worker threads (each one request at a time per connection).
const WORKERS: usize = 16;
/// Attempts per job, at most (a Redis restart with AOF takes seconds).
const MAX_ATTEMPTS: u32 = 60;
/// The longest wait before a retry.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(1);

/// One publish: kind (0 all-hands, 1 room, 2 user), which room or user, its number.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub kind: usize,
    pub target: u64,
    pub number: u64,
}

/// Counters, per kind where it says so; read by the parent while running.
#[derive(Debug, Default)]
pub struct Counters {
    /// Jobs acknowledged (200), per kind.
    pub acked: [AtomicU64; 3],
    /// Attempts that failed (503, lost answer, refused connection), per kind.
    pub failed: [AtomicU64; 3],
    /// Attempts that were retries, per kind.
    pub retries: [AtomicU64; 3],
    /// Jobs given up (refused otherwise than 503, or out of attempts), per kind.
    pub given_up: [AtomicU64; 3],
    /// Attempts that found their node refusing connections and went to the next one.
    pub node_skips: AtomicU64,
}

impl Counters {
    /// A copy of the counters as they are now.
    pub fn snapshot(&self) -> Counters {
        let copy = |a: &[AtomicU64; 3]| {
            a.each_ref()
                .map(|x| AtomicU64::new(x.load(Ordering::Relaxed)))
        };
        Counters {
            acked: copy(&self.acked),
            failed: copy(&self.failed),
            retries: copy(&self.retries),
            given_up: copy(&self.given_up),
            node_skips: AtomicU64::new(self.node_skips.load(Ordering::Relaxed)),
        }
    }

    /// The sum over kinds of one counter.
    pub fn total(c: &[AtomicU64; 3]) -> u64 {
        c.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }
}

/// The last acknowledged `(epoch, seq)` per stream.
#[derive(Debug, Default, Clone)]
pub struct Tops {
    pub all: Option<(String, u64)>,
    pub rooms: HashMap<u64, (String, u64)>,
    pub users: HashMap<u64, (String, u64)>,
}

impl Tops {
    /// Records an acknowledged `(epoch, seq)` for the stream of `kind`/`target`: the highest
    /// `seq` under one epoch; an answer under another epoch replaces it (it came later).
    fn record(&mut self, kind: usize, target: u64, epoch: &str, seq: u64) {
        let slot = match kind {
            0 => &mut self.all,
            _ => {
                let map = if kind == 1 {
                    &mut self.rooms
                } else {
                    &mut self.users
                };
                let e = map.entry(target).or_insert_with(|| (epoch.to_string(), 0));
                if e.0 != epoch {
                    *e = (epoch.to_string(), seq);
                } else {
                    e.1 = e.1.max(seq);
                }
                return;
            }
        };
        match slot {
            Some((e, s)) if e == epoch => *s = (*s).max(seq),
            _ => *slot = Some((epoch.to_string(), seq)),
        }
    }

    /// The tops file the children read: `all E S`, `room I E S`, `user I E S`, one a line.
    pub fn to_file_text(&self) -> String {
        let mut out = String::new();
        if let Some((e, s)) = &self.all {
            out.push_str(&format!("all {e} {s}\n"));
        }
        for (i, (e, s)) in &self.rooms {
            out.push_str(&format!("room {i} {e} {s}\n"));
        }
        for (i, (e, s)) in &self.users {
            out.push_str(&format!("user {i} {e} {s}\n"));
        }
        out
    }
}

/// What every worker shares.
struct Shared {
    targets: Vec<Target>,
    auth: Option<String>,
    size: usize,
    /// The user name with `{n}` where the user's number goes.
    user_template: String,
    run_id: u64,
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    stop: AtomicBool,
    counters: Counters,
    tops: Mutex<Tops>,
}

/// The running publishers.
pub struct Publishers {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Publishers {
    /// Starts the workers for `targets` (the `--api` nodes); `user_template` names user i
    /// (`{n}` → i).
    pub fn start(
        targets: Vec<Target>,
        api_key: Option<&str>,
        size: usize,
        user_template: &str,
    ) -> Publishers {
        let shared = Arc::new(Shared {
            targets,
            auth: api_key.map(|k| format!("Authorization: Bearer {k}\r\n")),
            size,
            user_template: user_template.to_string(),
            run_id: now_ns() ^ (u64::from(std::process::id()) << 40),
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            tops: Mutex::new(Tops::default()),
        });
        let workers = (0..WORKERS)
            .map(|_| {
                let shared = shared.clone();
                std::thread::spawn(move || worker(&shared))
            })
            .collect();
        Publishers { shared, workers }
    }

    /// Queues a job.
    pub fn push(&self, job: Job) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.push_back(job);
        }
        self.shared.ready.notify_one();
    }

    /// Jobs queued and not yet taken.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().map_or(0, |q| q.len())
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// No more jobs: the workers finish what is queued and in hand, waiting up to `limit`;
    /// returns the tops acknowledged by then (a job still retrying after that is not in them)
    /// and the counters.
    pub fn finish(self, limit: Duration) -> (Tops, Counters) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.ready.notify_all();
        let until = now_ns() + limit.as_nanos() as u64;
        for w in self.workers {
            while !w.is_finished() && now_ns() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
        let tops = self
            .shared
            .tops
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        (tops, self.shared.counters.snapshot())
    }
}

/// A worker: takes jobs until stopped and the queue is empty.
fn worker(shared: &Shared) {
    let mut conns: Vec<ApiConn> = shared.targets.iter().cloned().map(ApiConn::new).collect();
    let mut body = Vec::with_capacity(512);
    let mut req = Vec::with_capacity(1024);
    loop {
        let job = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            loop {
                if let Some(job) = q.pop_front() {
                    break Some(job);
                }
                if shared.stop.load(Ordering::Relaxed) {
                    break None;
                }
                q = match shared.ready.wait_timeout(q, Duration::from_millis(50)) {
                    Ok((q, _)) => q,
                    Err(_) => return,
                };
            }
        };
        let Some(job) = job else {
            return;
        };
        publish(shared, &mut conns, &mut body, &mut req, job);
    }
}

/// Builds the request for `job` to `conn` into `req`.
fn build(shared: &Shared, conn: &ApiConn, job: Job, body: &mut Vec<u8>, req: &mut Vec<u8>) {
    body.clear();
    let path = match job.kind {
        2 => {
            let user = shared.user_template.replace("{n}", &job.target.to_string());
            let user = serde_json::to_string(&user).unwrap_or_default();
            let _ = write!(body, "{{\"user\":{user},\"data\":");
            "/api/send"
        }
        1 => {
            let _ = write!(body, "{{\"channel\":\"room-{}\",\"data\":", job.target);
            "/api/publish"
        }
        _ => {
            let _ = write!(body, "{{\"channel\":\"{}\",\"data\":", super::ALL_CHANNEL);
            "/api/publish"
        }
    };
    write_data(body, job.number, now_ns(), shared.size, Payload::Pad);
    let _ = write!(
        body,
        ",\"idempotency_key\":\"scale-{:016x}-{}\"}}",
        shared.run_id, job.number
    );
    req.clear();
    let _ = write!(
        req,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        conn.host(),
        body.len(),
        shared.auth.as_deref().unwrap_or("")
    );
    req.extend_from_slice(body);
}

/// Publishes `job` until acknowledged, refused for good, or out of attempts.
fn publish(
    shared: &Shared,
    conns: &mut [ApiConn],
    body: &mut Vec<u8>,
    req: &mut Vec<u8>,
    job: Job,
) {
    let c = &shared.counters;
    let k = job.kind.min(2);
    let nodes = conns.len().max(1);
    let mut node = (job.number % nodes as u64) as usize;
    let mut lost_before = false;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            c.retries[k].fetch_add(1, Ordering::Relaxed);
        }
        let Some(conn) = conns.get_mut(node) else {
            break;
        };
        build(shared, conn, job, body, req);
        let wait = match conn.send(req) {
            Err(Lost::Unsent(_)) => {
                c.node_skips.fetch_add(1, Ordering::Relaxed);
                // Every node refusing in turn: wait a little before going round again.
                (attempt as usize % nodes == nodes - 1).then_some(Duration::from_millis(100))
            }
            Err(Lost::Unknown(_)) => Some(lost_wait(&mut lost_before)),
            Ok(()) => match conn.read_response() {
                Ok(Answer::Ok(_)) => {
                    c.acked[k].fetch_add(1, Ordering::Relaxed);
                    if let Some((epoch, seq)) = seq_epoch(&conn.last_ok_body) {
                        if let Ok(mut t) = shared.tops.lock() {
                            t.record(k, job.target, &epoch, seq);
                        }
                    }
                    return;
                }
                Ok(Answer::Refused {
                    status: 503,
                    retry_after,
                    ..
                }) => Some(retry_after.unwrap_or(MAX_RETRY_WAIT).min(MAX_RETRY_WAIT)),
                Ok(Answer::Refused { .. }) => break,
                Err(_) => Some(lost_wait(&mut lost_before)),
            },
        };
        c.failed[k].fetch_add(1, Ordering::Relaxed);
        node = (node + 1) % nodes;
        if let Some(wait) = wait {
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    }
    c.given_up[k].fetch_add(1, Ordering::Relaxed);
}

/// The wait after a lost answer: none the first time (a keep-alive connection the server had
/// closed), then 100 ms.
fn lost_wait(lost_before: &mut bool) -> Duration {
    if std::mem::replace(lost_before, true) {
        Duration::from_millis(100)
    } else {
        Duration::ZERO
    }
}

/// `seq` and `epoch` of an API answer `{"seq":18,"epoch":"k3x9"}`.
fn seq_epoch(body: &[u8]) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some((
        v.get("epoch")?.as_str()?.to_string(),
        v.get("seq")?.as_u64()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tops_keep_the_highest_seq_of_the_latest_epoch() {
        let mut t = Tops::default();
        t.record(0, 0, "e1", 5);
        t.record(0, 0, "e1", 3);
        assert_eq!(t.all, Some(("e1".into(), 5)));
        t.record(0, 0, "e2", 1);
        assert_eq!(t.all, Some(("e2".into(), 1)));
        t.record(1, 7, "r", 2);
        t.record(2, 9, "u", 4);
        let text = t.to_file_text();
        assert!(
            text.contains("all e2 1\n") && text.contains("room 7 r 2\n"),
            "{text}"
        );
        assert!(text.contains("user 9 u 4\n"), "{text}");
        assert_eq!(
            seq_epoch(br#"{"seq":18,"epoch":"k3x9"}"#),
            Some(("k3x9".into(), 18))
        );
        assert_eq!(seq_epoch(b"{}"), None);
    }
}
