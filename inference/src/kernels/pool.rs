//! The engine's own worker threads: a persistent pool that runs one closure on every
//! thread at once (the caller is thread 0) and returns when all are done.
//!
//! A decode step of a small model is a few hundred products of tens of microseconds each,
//! so the hand-off must cost well under a microsecond: workers spin on an epoch counter
//! for a while after each job (about 50 µs) and only then sleep on a condition variable.
//! An idle engine therefore costs no CPU, and a busy one never pays a futex wake between
//! the products of one step.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spins before a worker sleeps. Measured: one spin is about 10-40 ns on the machines of
/// docs/performance.md, so this is 20-80 µs, longer than the gap between two products
/// of a step and far shorter than the gap between two steps of an idle engine.
const SPINS: u32 = 2_000;

type Job = dyn Fn(usize) + Sync;

/// A lock whose holder panicked is still consistent here: every critical section is a
/// single assignment or counter update.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Shared {
    threads: usize,
    epoch: AtomicUsize,
    /// The current job, valid from the epoch's bump until `pending` reaches zero.
    job: Mutex<Option<&'static Job>>,
    pending: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Workers asleep (guarded, so a wake-up is never lost between check and wait).
    sleepers: Mutex<usize>,
    wake: Condvar,
}

/// A pool of `threads` threads (the caller included). Not for concurrent callers: `run`
/// takes a lock, so a second caller waits for the first.
pub struct Pool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    running: Mutex<()>,
}

impl Pool {
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared::new(threads));
        let handles = (1..threads)
            .filter_map(|i| {
                let s = shared.clone();
                std::thread::Builder::new().name(format!("nave-kernel-{i}")).spawn(move || worker(&s, i)).ok()
            })
            .collect::<Vec<_>>();
        // A thread that could not be spawned leaves the pool smaller, never wrong.
        let shared = if handles.len() + 1 == threads {
            shared
        } else {
            tracing::warn!(wanted = threads, got = handles.len() + 1, "could not start every kernel thread");
            shared.stop.store(true, Ordering::SeqCst);
            Arc::new(Shared::new(1))
        };
        Self { shared, handles, running: Mutex::new(()) }
    }

    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `f(i)` for every thread index `i` in `0..threads()` concurrently; returns when
    /// all have returned. A panic in any of them is re-raised here.
    pub fn run<F: Fn(usize) + Sync>(&self, f: &F) {
        let s = &self.shared;
        if s.threads == 1 {
            f(0);
            return;
        }
        let _one_caller = lock(&self.running);
        let job: &(dyn Fn(usize) + Sync + '_) = f;
        // SAFETY: the reference is only used by workers between the epoch bump below and
        // their decrement of `pending`, and this function does not return (nor unwind:
        // see `Wait`) before `pending` is zero, so it never outlives `f`.
        let job: &'static Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(job) };
        *lock(&s.job) = Some(job);
        s.pending.store(s.threads - 1, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let sleepers = lock(&s.sleepers);
            if *sleepers > 0 {
                s.wake.notify_all();
            }
        }
        struct Wait<'a>(&'a Shared);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                while self.0.pending.load(Ordering::Acquire) != 0 {
                    std::hint::spin_loop();
                }
                *lock(&self.0.job) = None;
            }
        }
        let wait = Wait(s);
        f(0);
        drop(wait);
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a kernel thread panicked");
        }
    }
}

impl Shared {
    fn new(threads: usize) -> Self {
        Shared {
            threads,
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let mut sleepers = lock(&s.sleepers);
            if s.epoch.load(Ordering::Acquire) == seen && !s.stop.load(Ordering::Relaxed) {
                *sleepers += 1;
                sleepers = s.wake.wait(sleepers).unwrap_or_else(std::sync::PoisonError::into_inner);
                *sleepers -= 1;
            }
            spins = 0;
        }
        let job = *lock(&s.job);
        if let Some(job) = job {
            if catch_unwind(AssertUnwindSafe(|| job(index))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _sleepers = lock(&self.shared.sleepers);
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// `0..n` in pieces that threads take as they finish: thread `i` first takes the pieces
/// of its own share (`share(n, i, ..)`, in order, from a counter of its own, so the taking
/// costs an uncontended atomic), then helps with what is left of the others'. A thread
/// slowed down (a busy neighbour on the core, a colder cache) holds the others up by at
/// most one piece instead of by the difference of two fixed shares. A piece is about an
/// eighth of a share, in whole units of `align`, and at least `min` (rounded up to
/// `align`) so that its work outweighs its start.
pub struct Claims {
    shares: Vec<Counter>,
    piece: usize,
}

/// One share's next unit and end, on a cache line of its own.
#[repr(align(128))]
struct Counter {
    next: AtomicUsize,
    end: usize,
}

impl Claims {
    pub fn new(n: usize, threads: usize, align: usize, min: usize) -> Self {
        let (threads, align) = (threads.max(1), align.max(1));
        let piece = (n / (8 * threads)).max(min).max(1).next_multiple_of(align);
        let shares = (0..threads)
            .map(|i| {
                let r = share(n, i, threads, align);
                Counter { next: AtomicUsize::new(r.start), end: r.end }
            })
            .collect();
        Claims { shares, piece }
    }

    /// Thread `t`'s next piece, or `None` once all of `0..n` is taken.
    pub fn take(&self, t: usize) -> Option<std::ops::Range<usize>> {
        let k = self.shares.len();
        (0..k).find_map(|j| {
            let c = &self.shares[(t + j) % k];
            if c.next.load(Ordering::Relaxed) >= c.end {
                return None;
            }
            let lo = c.next.fetch_add(self.piece, Ordering::Relaxed);
            (lo < c.end).then(|| lo..(lo + self.piece).min(c.end))
        })
    }
}

/// The range of `0..n` that thread `i` of `threads` takes, in whole units of `align`.
pub fn share(n: usize, i: usize, threads: usize, align: usize) -> std::ops::Range<usize> {
    let units = n.div_ceil(align);
    let lo = units * i / threads * align;
    let hi = (units * (i + 1) / threads * align).min(n);
    lo.min(n)..hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = Pool::new(3);
        let hits = AtomicU64::new(0);
        for round in 0..2_000u64 {
            pool.run(&|i| {
                hits.fetch_add(1 << (20 * i as u64), Ordering::Relaxed);
            });
            let h = hits.load(Ordering::Relaxed);
            let n = round + 1;
            assert_eq!(h, n | n << 20 | n << 40, "round {round}");
        }
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_job() {
        let pool = Pool::new(2);
        let count = AtomicU64::new(0);
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            pool.run(&|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(count.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn claims_hand_out_every_piece_once_across_threads() {
        for (n, align, min) in [(0, 8, 32), (5, 8, 32), (577, 8, 32), (262144, 8, 32), (64, 1, 1)] {
            let pool = Pool::new(3);
            let claims = Claims::new(n, 3, align, min);
            let taken = Mutex::new(Vec::new());
            pool.run(&|t| {
                while let Some(r) = claims.take(t) {
                    assert!(r.start.is_multiple_of(align) && r.start < r.end);
                    lock(&taken).push(r);
                }
            });
            let mut taken = taken.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
            taken.sort_by_key(|r| r.start);
            let mut next = 0;
            for r in &taken {
                assert_eq!(r.start, next, "n {n}");
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn shares_cover_the_range_in_aligned_pieces() {
        for n in [0, 1, 5, 64, 577, 49152] {
            for threads in 1..5 {
                let mut next = 0;
                for i in 0..threads {
                    let r = share(n, i, threads, 4);
                    assert_eq!(r.start, next);
                    assert!(r.start.is_multiple_of(4) || r.start == n);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }
}
