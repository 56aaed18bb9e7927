//! Fine-tuning jobs on a spoke, inside its training partition, behind serving.
//!
//! A job is checked before it starts (its data, line by line; its memory estimate against
//! the training partition's free bytes: both figures in the refusal), then runs on its
//! own thread at the lowest CPU priority (as are the threads its tensor products use), one
//! optimizer step at a time, one job at a time (others wait, queued, holding their
//! reservations). After each step the job's real memory is measured (the peak resident
//! size above the level when it started): more than it reserved grows the reservation,
//! and a growth the training partition cannot give fails the job cleanly, its memory
//! released and serving untouched. Between steps it yields to serving: while the engine has
//! requests, the job's share of wall time is capped (`training_share`); when serving is
//! idle it runs flat out. The finished adapter is saved in the spoke's
//! directory (`adapters/<name>.safetensors`) and served at once; adapters found there at
//! start are served again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nave_inference::ledger::{peak_rss_bytes, process_rss_bytes, reset_peak_rss, Reservation};
use nave_inference::train::{estimate_bytes, read_examples, Adapter, Trainer};
use nave_inference::{Engine, Ledger, Partition};

use crate::protocol::{JobStatus, TrainSpec};
use nave_consensus::sync::lock;

/// Puts the calling thread at the lowest CPU priority (nice 19, or `NAVE_TRAINING_NICE`):
/// the engine's threads then win every contended moment, and training takes only what
/// serving leaves. (The test suite sets 0: on a machine loaded by other work, nice 19
/// would let its short jobs starve.)
pub fn lower_priority() {
    let nice = std::env::var("NAVE_TRAINING_NICE").ok().and_then(|v| v.parse::<i32>().ok()).unwrap_or(19).clamp(0, 19);
    // SAFETY: plain system calls on the calling thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

struct Job {
    status: Arc<Mutex<JobStatus>>,
    cancel: Arc<AtomicBool>,
}

/// The spoke's jobs, by adapter name.
pub struct Jobs {
    spoke: String,
    share: f64,
    dir: PathBuf,
    jobs: Mutex<BTreeMap<String, Job>>,
    /// Held by the running job: one at a time, so that each one's measured memory is its own.
    turn: Arc<Mutex<()>>,
}

/// The model paths of the spoke's engines, to open the frozen f32 copy from.
pub type ModelPaths = std::collections::HashMap<String, PathBuf>;

/// Writes a job's status beside the adapters, so that a restart knows what happened.
fn persist(dir: &Path, status: &JobStatus) {
    let path = dir.join(format!("{}.job.json", status.name));
    let tmp = path.with_extension("tmp");
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, serde_json::to_vec_pretty(status).unwrap_or_default()))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(job = %status.name, error = %e, "cannot record the job's state");
    }
}

impl Jobs {
    /// The jobs recorded in the node's directory: one that was queued or running when
    /// the spoke stopped is marked failed (its adapter was never finished).
    pub fn new(spoke: &str, node_dir: &Path, share: f64) -> Self {
        let dir = node_dir.join("adapters");
        let mut jobs = BTreeMap::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if !path.to_string_lossy().ends_with(".job.json") {
                continue;
            }
            let Some(mut status) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<JobStatus>(&b).ok())
            else {
                continue;
            };
            if matches!(status.state.as_str(), "queued" | "running") {
                status.state = "failed".into();
                status.error = Some(format!("the spoke stopped during the job, at step {}", status.step));
                persist(&dir, &status);
            }
            let name = status.name.clone();
            jobs.insert(name, Job { status: Arc::new(Mutex::new(status)), cancel: Arc::new(AtomicBool::new(true)) });
        }
        Self { spoke: spoke.to_string(), share, dir, jobs: Mutex::new(jobs), turn: Arc::new(Mutex::new(())) }
    }

    pub fn statuses(&self) -> Vec<JobStatus> {
        lock(&self.jobs).values().map(|j| lock(&j.status).clone()).collect()
    }

    pub fn cancel(&self, name: &str) -> Result<(), String> {
        let jobs = lock(&self.jobs);
        let job = jobs.get(name).ok_or_else(|| format!("no job named {name:?} on spoke {}", self.spoke))?;
        job.cancel.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Serves the adapters a previous run saved (`adapters/<model>~<name>.safetensors`).
    pub fn load_saved(&self, engines: &std::collections::HashMap<String, Arc<Engine>>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            let Some(stem) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|_| path.extension().is_some_and(|x| x == "safetensors"))
            else {
                continue;
            };
            let Some((model, name)) = stem.split_once('~') else { continue };
            let Some(engine) = engines.get(model) else { continue };
            match Adapter::load(&path).and_then(|a| engine.add_adapter(name, &a)) {
                Ok(()) => tracing::info!(%model, adapter = %name, "adapter served"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "adapter not loaded"),
            }
        }
    }

    /// Checks and starts a job; the error says why it cannot run.
    pub fn submit(
        &self,
        spec: TrainSpec,
        engines: &std::collections::HashMap<String, Arc<Engine>>,
        paths: &ModelPaths,
        ledger: &Ledger,
    ) -> Result<(), String> {
        let valid = !spec.name.is_empty()
            && spec.name.len() <= 64
            && spec.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(format!("adapter name {:?}: use 1-64 letters, digits, '-', '_' or '.'", spec.name));
        }
        let name = spec.name.clone();
        let engine = engines
            .get(&spec.model)
            .ok_or_else(|| format!("spoke {} does not serve model {}", self.spoke, spec.model))?
            .clone();
        let path = paths.get(&spec.model).ok_or_else(|| format!("no model file for {}", spec.model))?.clone();
        spec.config.validate().map_err(|e| e.to_string())?;
        {
            let jobs = lock(&self.jobs);
            if jobs.get(&spec.name).is_some_and(|j| matches!(lock(&j.status).state.as_str(), "queued" | "running")) {
                return Err(format!("a job named {:?} is running", spec.name));
            }
        }
        // The data, checked whole before anything starts; only the model's header is
        // read here (the weights are loaded once, by the trainer, inside the reservation).
        let info = nave_inference::ModelInfo::read(&path).map_err(|e| e.to_string())?;
        let eot = info.tokenizer.end_of_turn().ok_or("the model has no end-of-turn token")?;
        let examples = read_examples(&spec.data, &info.tokenizer, info.template.as_ref(), eot, spec.config.max_tokens)
            .map_err(|e| e.to_string())?;
        let (config, ffn) = (info.config, info.ffn);
        let need = estimate_bytes(&config, ffn, &spec.config);
        let mut reservation =
            ledger.reserve(Partition::Training, need).map_err(|e| format!("the job does not fit: {e}"))?;

        let status = Arc::new(Mutex::new(JobStatus {
            name: spec.name.clone(),
            model: spec.model.clone(),
            spoke: self.spoke.clone(),
            state: "queued".into(),
            steps: spec.config.steps,
            memory_bytes: need,
            ..Default::default()
        }));
        let cancel = Arc::new(AtomicBool::new(false));
        let file = self.dir.join(format!("{}~{}.safetensors", spec.model, spec.name));
        persist(&self.dir, &lock(&status));
        let (st, stop, dir, share, turn) =
            (status.clone(), cancel.clone(), self.dir.clone(), self.share, self.turn.clone());
        std::thread::Builder::new()
            .name(format!("train-{}", spec.name))
            .spawn(move || {
                lower_priority();
                let outcome = match wait_turn(&turn, &stop) {
                    Some(_turn) => {
                        run(&path, config, spec.config, examples, &engine, &st, &stop, &file, share, &mut reservation)
                    }
                    None => Ok(false),
                };
                // The trainer's memory is gone: give the partition share back first.
                drop(reservation);
                let mut s = lock(&st);
                match outcome {
                    Ok(true) => match Adapter::load(&file).and_then(|a| engine.add_adapter(&s.name, &a)) {
                        Ok(()) => s.state = "done".into(),
                        Err(e) => {
                            s.state = "failed".into();
                            s.error = Some(e.to_string());
                        }
                    },
                    Ok(false) => s.state = "cancelled".into(),
                    Err(e) => {
                        s.state = "failed".into();
                        s.error = Some(e);
                    }
                }
                persist(&dir, &s);
                tracing::info!(job = %s.name, state = %s.state, step = s.step, loss = s.loss, "training job ended");
            })
            .map_err(|e| e.to_string())?;
        lock(&self.jobs).insert(name, Job { status, cancel });
        Ok(())
    }
}

/// Waits until no other job runs; `None` if cancelled meanwhile.
fn wait_turn<'a>(turn: &'a Mutex<()>, cancel: &AtomicBool) -> Option<std::sync::MutexGuard<'a, ()>> {
    loop {
        if cancel.load(Ordering::Relaxed) {
            return None;
        }
        match turn.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The job's memory as measured: the peak resident size since the last reset, above
/// `baseline` (the level when the job started). Serving's memory is resident from the
/// start (weights, the whole KV pool), so what grows is the job's.
struct MemoryWatch {
    baseline: u64,
}

impl MemoryWatch {
    fn start() -> Self {
        reset_peak_rss();
        Self { baseline: process_rss_bytes().unwrap_or(0) }
    }

    /// Covers what was used since the last check with the reservation (growing it), or
    /// says why the job must stop.
    fn check(&self, reservation: &mut Reservation, status: &Mutex<JobStatus>, during: &str) -> Result<(), String> {
        let seen = peak_rss_bytes().unwrap_or(0).saturating_sub(self.baseline);
        reset_peak_rss();
        let covered = reservation.cover(seen);
        let mut s = lock(status);
        s.peak_bytes = s.peak_bytes.max(seen);
        s.memory_bytes = reservation.bytes();
        covered.map_err(|e| {
            format!(
                "{during} used {} MB, more than the job reserved and than the training partition can give: {e}",
                seen / 1_000_000
            )
        })
    }
}

/// Trains to the end (true) or until cancelled (false), saving the adapter at the end.
#[allow(clippy::too_many_arguments)]
fn run(
    path: &Path,
    config: nave_inference::model::ModelConfig,
    cfg: nave_inference::train::TrainConfig,
    examples: Vec<nave_inference::train::Example>,
    engine: &Engine,
    status: &Mutex<JobStatus>,
    cancel: &AtomicBool,
    file: &Path,
    share: f64,
    reservation: &mut Reservation,
) -> Result<bool, String> {
    let watch = MemoryWatch::start();
    let mut trainer = Trainer::new(path, config, cfg, examples).map_err(|e| e.to_string())?;
    watch.check(reservation, status, "loading the base weights")?;
    {
        let mut s = lock(status);
        s.state = "running".into();
        persist(file.parent().unwrap_or(Path::new(".")), &s);
    }
    while !trainer.finished() {
        if cancel.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let started = Instant::now();
        let served_before = engine.stats().steps;
        let f = trainer.step().map_err(|e| e.to_string())?;
        watch.check(reservation, status, &format!("step {}", f.step))?;
        {
            let mut s = lock(status);
            s.step = f.step;
            s.loss = f.loss;
            s.record_loss(f.step, f.loss);
            s.tokens_per_s = f.tokens_per_s;
            if f.step.is_multiple_of(10) {
                persist(file.parent().unwrap_or(Path::new(".")), &s);
            }
        }
        // Serving first: if the engine ran while this step did (or has work now), rest long
        // enough that this job's share of the time stays at `share`; when serving is
        // idle, go straight on.
        let stats = engine.stats();
        if stats.steps != served_before || stats.running + stats.waiting > 0 {
            let until = Instant::now() + started.elapsed().mul_f64((1.0 - share) / share);
            while Instant::now() < until && !cancel.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
            }
        }
    }
    let adapter = trainer.adapter().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(file.parent().unwrap_or(Path::new("."))).map_err(|e| e.to_string())?;
    adapter.save(file).map_err(|e| e.to_string())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resident size is the process's: these tests measure it one at a time.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    /// Touches `mib` MiB so that they are resident, and keeps them until dropped.
    fn resident(mib: usize) -> Vec<u8> {
        let mut v = vec![0u8; mib << 20];
        for i in (0..v.len()).step_by(4096) {
            // SAFETY: in bounds.
            unsafe { std::ptr::write_volatile(v.as_mut_ptr().add(i), 1) };
        }
        v
    }

    #[test]
    fn a_job_that_outgrows_the_training_partition_is_stopped_and_serving_untouched() {
        let _one = lock(&ONE_AT_A_TIME);
        if !reset_peak_rss() {
            return; // no resident-size figures on this system
        }
        let ledger = Ledger::new("cpu", 1 << 30, 48 << 20);
        let _serving = ledger.reserve(Partition::Serving, 512 << 20).expect("fits");
        let mut job = ledger.reserve(Partition::Training, 8 << 20).expect("fits");
        let status = Mutex::new(JobStatus::default());
        let watch = MemoryWatch::start();
        let step = resident(96);
        let err = watch.check(&mut job, &status, "step 7").expect_err("96 MiB cannot fit a 48 MiB partition");
        drop(step);
        assert!(err.contains("step 7") && err.contains("training partition"), "{err}");
        let s = ledger.snapshot();
        assert_eq!((s.training.used, s.serving.used), (8 << 20, 512 << 20), "the refused growth took nothing");
        assert!(lock(&status).peak_bytes >= 90 << 20, "the job's status shows what it used");
        drop(job);
        assert_eq!(ledger.snapshot().training.used, 0, "the failed job's reservation is released");
    }

    #[test]
    fn a_job_that_uses_more_than_its_estimate_grows_its_reservation_when_it_fits() {
        let _one = lock(&ONE_AT_A_TIME);
        if !reset_peak_rss() {
            return;
        }
        let ledger = Ledger::new("cpu", 1 << 30, 4 << 30);
        let mut job = ledger.reserve(Partition::Training, 1 << 20).expect("fits");
        let status = Mutex::new(JobStatus::default());
        let watch = MemoryWatch::start();
        let step = resident(32);
        watch.check(&mut job, &status, "step 1").expect("the partition has room");
        drop(step);
        assert!(
            job.bytes() >= 30 << 20 && ledger.snapshot().training.used == job.bytes(),
            "grown to what was used: {}",
            job.bytes()
        );
        assert_eq!(lock(&status).memory_bytes, job.bytes());
    }
}
