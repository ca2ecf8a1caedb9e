//! The writer: one dedicated OS thread owns the file; request tasks hand it events through
//! a bounded queue and await their receipt.
//!
//! - The thread never runs on tokio's workers, so a slow disk or a long `fdatasync` blocks no
//!   request but the ones waiting for their record.
//! - A full queue is back-pressure: [`AuditTrail::append`] waits for room; no record is
//!   dropped.
//! - Group commit: whatever is queued when the thread comes back for more (up to
//!   [`MAX_BATCH`] records) becomes one batch, written with one `write` on an `O_APPEND`
//!   file and covered by one `fdatasync`. Each caller's future resolves only after that.
//! - A batch that fails (short write, `EFBIG`, `ENOSPC`, `EIO` from `fdatasync`) is cut off
//!   the file again (`ftruncate` to the length before it), its callers get an error and the
//!   trail is "failing" until a later batch succeeds: no half line or record that a client
//!   was refused for stays in the file, and the chain goes on from the last line kept.
//! - While failing and idle, the writer probes every [`PROBE_EVERY`] whether the trail could
//!   be written again (without adding a line), so that `/readyz` recovers without traffic.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::chain::{Linker, MissingKey};
use super::clock;
use super::record::{Event, Line};
use super::rotate;
use super::stats::AuditStats;
use super::tail;
use crate::config::{AuditConfig, AuditFsync, AuditOnFailure};

/// Records waiting for the writer at most; more callers wait for room.
pub const QUEUE_CAPACITY: usize = 1024;
/// Records in one write batch at most (bounds a batch's memory and the wait of its first).
pub const MAX_BATCH: usize = 256;
/// While failing and idle, how often the writer probes whether the trail can be written.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The size of the probe file written (and synced, then removed) beside the trail: room for
/// a large batch.
const PROBE_BYTES: usize = 64 * 1024;

/// Why the trail could not be opened or a record not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit trail {}: {message}", path.display())]
    Open { path: PathBuf, message: String },
    #[error(transparent)]
    Key(#[from] MissingKey),
    #[error("the audit trail {} is already open in this process (close the old writer first)", path.display())]
    AlreadyOpen { path: PathBuf },
    #[error("cannot start the audit writer thread: {0}")]
    Spawn(String),
    #[error("cannot write the audit trail: {0}")]
    Write(String),
    #[error("cannot encode an audit record: {0}")]
    Encode(String),
    #[error("the audit writer has stopped")]
    Closed,
}

/// Proof that a record is in the file (and, with `fsync = "always"`, on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The record's `seq`.
    pub seq: u64,
    /// The link of the record's line: the next record's `prev`.
    pub link: String,
}

/// How to open a trail; [`Options::from_config`] reads `[audit]`.
#[derive(Debug, Clone)]
pub struct Options {
    pub path: PathBuf,
    /// The `instance` of every record (already resolved: never "").
    pub instance: String,
    pub linker: Linker,
    /// `fdatasync` after every batch.
    pub fsync: bool,
    pub max_file_bytes: u64,
    pub on_failure: AuditOnFailure,
    pub queue_capacity: usize,
    /// While failing and idle, the writer probes this often (see [`AuditTrail::is_failing`]).
    pub probe_every: Duration,
}

impl Options {
    /// The defaults of `[audit]` for `path`, with the host name as instance and plain links.
    pub fn new(path: impl Into<PathBuf>) -> Options {
        Options {
            path: path.into(),
            instance: host_name(),
            linker: Linker::plain(),
            fsync: true,
            max_file_bytes: AuditConfig::default().max_file_bytes,
            on_failure: AuditOnFailure::Deny,
            queue_capacity: QUEUE_CAPACITY,
            probe_every: PROBE_EVERY,
        }
    }

    /// The options `[audit]` asks for: the key read from `hmac_key_env` (a named variable
    /// that is not set is an error), `instance = ""` resolved to the host name.
    pub fn from_config(config: &AuditConfig) -> Result<Options, AuditError> {
        Ok(Options {
            path: config.path.clone(),
            instance: if config.instance.is_empty() {
                host_name()
            } else {
                config.instance.clone()
            },
            linker: Linker::from_env(&config.hmac_key_env)?,
            fsync: config.fsync == AuditFsync::Always,
            max_file_bytes: config.max_file_bytes,
            on_failure: config.on_failure,
            queue_capacity: QUEUE_CAPACITY,
            probe_every: PROBE_EVERY,
        })
    }
}

/// The host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else "unknown").
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// Where a record's outcome goes.
type Done = oneshot::Sender<Result<Receipt, AuditError>>;

enum Job {
    /// Boxed: queue slots stay small whatever an event holds.
    Append(Box<Event>, Done),
    Close(oneshot::Sender<()>),
}

struct Shared {
    stats: AuditStats,
    on_failure: AuditOnFailure,
    path: PathBuf,
    instance: String,
}

/// A handle on the trail. Cheap to clone; every clone feeds the same writer thread, which
/// ends when the last clone is dropped (after writing what was queued) or on [`close`].
///
/// Open it once per process, at start-up: a second writer on the same file would fork the
/// chain, so opening a path this process already writes is [`AuditError::AlreadyOpen`].
///
/// [`close`]: AuditTrail::close
#[derive(Clone)]
pub struct AuditTrail {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail")
            .field("path", &self.shared.path)
            .field("failing", &self.is_failing())
            .finish()
    }
}

impl AuditTrail {
    /// Opens the trail `[audit]` describes: continues an existing file (repairing a torn
    /// last line), then starts the writer thread. Blocking file I/O: call it at start-up
    /// (or in `spawn_blocking`). An error here is a start-up failure (exit 1).
    pub fn open(config: &AuditConfig) -> Result<AuditTrail, AuditError> {
        AuditTrail::open_with(Options::from_config(config)?)
    }

    /// Opens a trail with explicit options (tests, tools).
    pub fn open_with(o: Options) -> Result<AuditTrail, AuditError> {
        let open_err = |e: std::io::Error| AuditError::Open {
            path: o.path.clone(),
            message: e.to_string(),
        };
        let registration = Registration::new(&o.path).map_err(open_err)??;
        let (file, c) = tail::open_and_continue(&o.path, &o.linker, o.fsync).map_err(open_err)?;
        if let Some(n) = c.torn {
            tracing::warn!(path = %o.path.display(), bytes = n, seq = c.seq, "audit trail: kept a torn last line and chained on from it");
        }
        if let Some(r) = &c.from_rotated {
            tracing::info!(path = %o.path.display(), from = %r.display(), seq = c.seq, "audit trail: continuing the chain of the rotated file");
        }
        let shared = Arc::new(Shared {
            stats: AuditStats::default(),
            on_failure: o.on_failure,
            path: o.path.clone(),
            instance: o.instance.clone(),
        });
        let state = WriterState {
            file,
            path: o.path.clone(),
            len: c.len,
            seq: c.seq,
            prev: c.prev,
            linker: o.linker,
            instance: o.instance,
            fsync: o.fsync,
            max_file_bytes: o.max_file_bytes,
            shared: shared.clone(),
            truncate_to: None,
            rotation_warned: false,
            probe_every: o.probe_every,
            _registration: registration,
        };
        let (tx, rx) = mpsc::channel(o.queue_capacity.max(1));
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(state, rx))
            .map_err(|e| AuditError::Spawn(e.to_string()))?;
        Ok(AuditTrail { tx, shared })
    }

    /// Puts `event` on the chain. Resolves after its line is written whole (and, with
    /// `fsync = "always"`, `fdatasync`'d), with its `seq` and link; or with the error that
    /// kept it out of the file. Waits while the queue is full. Cancel-safe in the sense that
    /// matters: once queued, the record is written even if this future is dropped.
    pub fn append(
        &self,
        event: Event,
    ) -> impl Future<Output = Result<Receipt, AuditError>> + Send + 'static {
        let tx = self.tx.clone();
        async move {
            let (done, receipt) = oneshot::channel();
            tx.send(Job::Append(Box::new(event), done))
                .await
                .map_err(|_| AuditError::Closed)?;
            receipt.await.map_err(|_| AuditError::Closed)?
        }
    }

    /// Whether the trail cannot be written right now (the last batch failed): `/readyz` is
    /// 503 while this holds. It clears by itself when a later write succeeds, or when the
    /// writer's idle probe (every [`PROBE_EVERY`]: the trail file opens for appending, a 64 KiB
    /// file beside it is written and synced) succeeds, so that a replica taken out of a load
    /// balancer by its 503 comes back without needing traffic.
    pub fn is_failing(&self) -> bool {
        self.shared.stats.is_failing()
    }

    /// What the endpoint does when a record cannot be written.
    pub fn on_failure(&self) -> AuditOnFailure {
        self.shared.on_failure
    }

    /// Counters and the fsync histogram, for `/metrics`.
    pub fn stats(&self) -> &AuditStats {
        &self.shared.stats
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The `instance` written into every record.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// Writes what is queued, stops the writer and closes the file; then the path may be
    /// opened again. Appends from other clones after this get [`AuditError::Closed`].
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The paths this process writes: a second writer on one file would fork its chain.
static OPEN_PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A path's entry in [`OPEN_PATHS`], removed on drop (when the writer thread ends).
struct Registration(PathBuf);

impl Registration {
    /// The outer error: the path cannot be resolved; the inner: it is already open.
    fn new(path: &Path) -> std::io::Result<Result<Registration, AuditError>> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let Some(name) = path.file_name() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file name",
            ));
        };
        let key = std::fs::canonicalize(dir)?.join(name);
        let mut open = OPEN_PATHS.lock().unwrap_or_else(|e| e.into_inner());
        if open.contains(&key) {
            return Ok(Err(AuditError::AlreadyOpen {
                path: path.to_owned(),
            }));
        }
        open.push(key.clone());
        Ok(Ok(Registration(key)))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = OPEN_PATHS.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|p| *p != self.0);
    }
}

/// Everything the writer thread owns.
struct WriterState {
    file: File,
    path: PathBuf,
    /// The file's length as far as kept records go.
    len: u64,
    /// The last record's `seq`.
    seq: u64,
    /// The next record's `prev`.
    prev: String,
    linker: Linker,
    instance: String,
    fsync: bool,
    max_file_bytes: u64,
    shared: Arc<Shared>,
    /// A failed batch could not be cut off the file: cut it before writing again.
    truncate_to: Option<u64>,
    rotation_warned: bool,
    probe_every: Duration,
    _registration: Registration,
}

/// Marks the trail failing if the writer thread panics, so `/readyz` says so.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stats.set_failing(true);
        }
    }
}

fn run(mut w: WriterState, mut rx: mpsc::Receiver<Job>) {
    let _guard = PanicGuard(w.shared.clone());
    // A timer for waiting with a time-out while failing (the probe); tokio's channel has no
    // blocking receive with a time-out of its own.
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok();
    let mut closing = None;
    loop {
        let received = match &timer {
            Some(rt) if w.shared.stats.is_failing() => {
                // The timer is made inside `block_on`: it needs the runtime's context.
                let every = w.probe_every;
                match rt.block_on(async { tokio::time::timeout(every, rx.recv()).await }) {
                    Ok(r) => r,
                    Err(_) => {
                        w.probe();
                        continue;
                    }
                }
            }
            _ => rx.blocking_recv(),
        };
        let Some(job) = received else {
            break;
        };
        let mut batch = Vec::new();
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                Job::Append(e, done) => batch.push((e, done)),
                Job::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            w.write_batch(batch);
        }
        if closing.is_some() {
            break;
        }
    }
    // Records still queued behind a close are refused (their callers see `Closed`); the
    // file is closed and the path released before `close()` returns.
    drop(rx);
    drop(w);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Records on their way into the file together, and how to undo them.
struct Unit {
    buf: Vec<u8>,
    acks: Vec<(Done, Receipt)>,
    alerts: u64,
    base_len: u64,
    base_seq: u64,
    base_prev: String,
}

impl Unit {
    fn new(w: &WriterState) -> Unit {
        Unit {
            buf: Vec::new(),
            acks: Vec::new(),
            alerts: 0,
            base_len: w.len,
            base_seq: w.seq,
            base_prev: w.prev.clone(),
        }
    }
}

impl WriterState {
    /// The next record's line for `event`.
    fn line(&self, event: &Event, ts: &str) -> Result<Vec<u8>, serde_json::Error> {
        Line {
            seq: self.seq + 1,
            ts,
            instance: &self.instance,
            event,
            prev: &self.prev,
        }
        .to_bytes()
    }

    fn write_batch(&mut self, batch: Vec<(Box<Event>, Done)>) {
        let ts = clock::rfc3339_millis(clock::now());
        let mut unit = Unit::new(self);
        for (event, done) in batch {
            let mut line = match self.line(&event, &ts) {
                Ok(l) => l,
                Err(e) => {
                    let _ = done.send(Err(AuditError::Encode(e.to_string())));
                    continue;
                }
            };
            let pending = self.len + unit.buf.len() as u64;
            if pending > 0 && pending + line.len() as u64 + 1 > self.max_file_bytes {
                // Rotate between two records: what is pending goes into the old file first.
                if self.flush(&mut unit) {
                    self.rotate();
                } else if let Ok(l) = self.line(&event, &ts) {
                    // The failed records were undone: this one takes their place in the chain.
                    line = l;
                }
                unit = Unit::new(self);
            }
            let link = self.linker.link(&line);
            self.seq += 1;
            unit.buf.extend_from_slice(&line);
            unit.buf.push(b'\n');
            unit.alerts += u64::from(event.alert);
            unit.acks.push((
                done,
                Receipt {
                    seq: self.seq,
                    link: link.clone(),
                },
            ));
            self.prev = link;
        }
        self.flush(&mut unit);
    }

    /// Writes `unit` with one `write` (and one `fdatasync`), then answers its callers.
    /// Returns whether it is in the file; on failure the file, `seq` and `prev` are as
    /// before the unit.
    fn flush(&mut self, unit: &mut Unit) -> bool {
        if unit.acks.is_empty() {
            return true;
        }
        let n = unit.acks.len() as u64;
        let acks = std::mem::take(&mut unit.acks);
        match self.write_and_sync(&unit.buf) {
            Ok(()) => {
                self.len += unit.buf.len() as u64;
                self.shared.stats.written(n, unit.alerts);
                if self.shared.stats.set_failing(false) {
                    tracing::info!(path = %self.path.display(), "the audit trail can be written again");
                }
                for (done, receipt) in acks {
                    let _ = done.send(Ok(receipt));
                }
                true
            }
            Err(e) => {
                if let Err(t) = self.file.set_len(unit.base_len) {
                    tracing::error!(path = %self.path.display(), error = %t, "cannot cut a failed audit batch off the file; will retry before the next write");
                    self.truncate_to = Some(unit.base_len);
                }
                self.seq = unit.base_seq;
                self.prev = unit.base_prev.clone();
                self.shared.stats.failed(n);
                if !self.shared.stats.set_failing(true) {
                    // Once per outage; every failed record is counted.
                    tracing::error!(path = %self.path.display(), error = %e, "the audit trail cannot be written");
                }
                let message = e.to_string();
                for (done, _) in acks {
                    let _ = done.send(Err(AuditError::Write(message.clone())));
                }
                false
            }
        }
    }

    fn write_and_sync(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(len) = self.truncate_to {
            self.file.set_len(len)?;
            self.truncate_to = None;
        }
        // O_APPEND: one write puts the whole batch at the end; a short write (only on an
        // error such as EFBIG or ENOSPC) is followed by the error, and the batch is undone.
        self.file.write_all(buf)?;
        if self.fsync {
            let started = Instant::now();
            self.file.sync_data()?;
            self.shared.stats.fsync(started.elapsed());
        }
        Ok(())
    }

    /// While failing and idle: whether the trail could be written now. The trail file itself
    /// is only opened (a probe must not add a line to the chain); the space and the disk are
    /// tried with a probe file beside it. Success clears the failure state.
    fn probe(&mut self) {
        self.shared.stats.probed();
        match self.try_probe() {
            Ok(()) => {
                if self.shared.stats.set_failing(false) {
                    tracing::info!(path = %self.path.display(), "the audit trail can be written again (probe)");
                }
            }
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "audit trail probe failed")
            }
        }
    }

    fn try_probe(&mut self) -> std::io::Result<()> {
        if let Some(len) = self.truncate_to {
            self.file.set_len(len)?;
            self.truncate_to = None;
        }
        drop(rotate::open_append(&self.path)?);
        let mut name = self.path.as_os_str().to_owned();
        name.push(".probe");
        let probe = PathBuf::from(name);
        let written = std::fs::File::create(&probe).and_then(|mut f| {
            f.write_all(&[0u8; PROBE_BYTES])?;
            f.sync_data()
        });
        let removed = std::fs::remove_file(&probe);
        written.and(removed)
    }

    fn rotate(&mut self) {
        match rotate::rotate(&self.path, clock::now(), self.fsync) {
            Ok((to, file)) => {
                tracing::info!(path = %self.path.display(), rotated = %to.display(), seq = self.seq, "audit trail rotated");
                self.file = file;
                self.len = 0;
                self.rotation_warned = false;
            }
            Err(e) => {
                // The records are still written (to the current file): losing none matters
                // more than the size bound.
                if !self.rotation_warned {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate the audit trail; writing on");
                    self.rotation_warned = true;
                }
            }
        }
    }
}
