//! The memory ledger: one per device, through which every allocation of the engine and of
//! training jobs goes. Memory is split into a serving partition (weights and the KV pool,
//! reserved at start and never lent out) and a training partition. A reservation that does
//! not fit fails at once with an error naming both figures; a [`Reservation`] gives its
//! bytes back when dropped, so a failed or cancelled job cannot leak them.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::device::{DeviceMemory, Placement};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Partition {
    Serving,
    Training,
}

impl Partition {
    fn name(self) -> &'static str {
        match self {
            Partition::Serving => "serving",
            Partition::Training => "training",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionUsage {
    pub total: u64,
    pub used: u64,
}

impl PartitionUsage {
    pub fn free(&self) -> u64 {
        self.total.saturating_sub(self.used)
    }
}

/// Totals and use of both partitions, plus what the device reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSnapshot {
    pub device: String,
    pub serving: PartitionUsage,
    pub training: PartitionUsage,
    /// Resident memory of the process (CPU) or memory in use on the device (CUDA).
    pub device_used: u64,
    pub device_total: u64,
}

#[derive(Debug)]
struct State {
    serving: PartitionUsage,
    training: PartitionUsage,
}

/// A device's memory ledger; cheap to clone (one shared state).
#[derive(Debug, Clone)]
pub struct Ledger {
    device: String,
    /// The CUDA device whose real memory the snapshot reports (`None`: the CPU).
    cuda: Option<Placement>,
    state: Arc<Mutex<State>>,
}

impl Ledger {
    pub fn new(device: impl Into<String>, serving_total: u64, training_total: u64) -> Self {
        let state = State {
            serving: PartitionUsage { total: serving_total, used: 0 },
            training: PartitionUsage { total: training_total, used: 0 },
        };
        Self { device: device.into(), cuda: None, state: Arc::new(Mutex::new(state)) }
    }

    /// The ledger of `placement`. On a CUDA device both partitions are taken from the
    /// memory its driver reports free now: partitions that do not fit are an error with
    /// the figures, and snapshots report the device's own use and total.
    pub fn for_device(placement: Placement, serving_total: u64, training_total: u64) -> Result<Self> {
        let mut ledger = Self::new(placement.to_string(), serving_total, training_total);
        if let Some(mem) = placement.memory()? {
            partitions_fit(placement, mem, serving_total, training_total)?;
            ledger.cuda = Some(placement);
        }
        Ok(ledger)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // No code panics while holding this lock (plain arithmetic), so poisoning cannot
        // leave the figures half-updated; recover the guard rather than propagate.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `bytes` in `partition` or fails naming the request and what is free.
    pub fn reserve(&self, partition: Partition, bytes: u64) -> Result<Reservation> {
        let mut s = self.lock();
        let p = match partition {
            Partition::Serving => &mut s.serving,
            Partition::Training => &mut s.training,
        };
        if bytes > p.free() {
            return Err(Error::OutOfMemory {
                partition: partition.name(),
                requested: bytes,
                free: p.free(),
                total: p.total,
            });
        }
        p.used += bytes;
        Ok(Reservation { ledger: self.clone(), partition, bytes })
    }

    pub fn snapshot(&self) -> LedgerSnapshot {
        // The driver is asked before the lock is taken.
        let device = self.cuda.and_then(|p| p.memory().ok().flatten());
        let s = self.lock();
        let (device_used, device_total) = match device {
            Some(mem) => (mem.total - mem.free.min(mem.total), mem.total),
            None => (process_rss_bytes().unwrap_or(0), s.serving.total + s.training.total),
        };
        LedgerSnapshot {
            device: self.device.clone(),
            serving: s.serving,
            training: s.training,
            device_used,
            device_total,
        }
    }
}

/// Whether a serving and a training partition fit in what the device has free.
fn partitions_fit(placement: Placement, mem: DeviceMemory, serving: u64, training: u64) -> Result<()> {
    let wanted = serving.saturating_add(training);
    if wanted > mem.free {
        return Err(Error::Device(format!(
            "{placement}: the serving ({serving} bytes) and training ({training} bytes) partitions need \
             {wanted} bytes, but {} of the device's {} bytes are free",
            mem.free, mem.total
        )));
    }
    Ok(())
}

/// Bytes held in a partition until dropped.
#[derive(Debug)]
pub struct Reservation {
    ledger: Ledger,
    partition: Partition,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Grows the reservation, or fails with both figures and leaves it as it was.
    pub fn grow(&mut self, more: u64) -> Result<()> {
        let extra = self.ledger.reserve(self.partition, more)?;
        self.bytes += extra.bytes;
        std::mem::forget(extra);
        Ok(())
    }

    /// Makes the reservation cover `seen` bytes, what its holder was measured to use:
    /// grows it when that is more than reserved, or fails (both figures) when the
    /// partition cannot give the difference. It never shrinks.
    pub fn cover(&mut self, seen: u64) -> Result<()> {
        match seen.checked_sub(self.bytes) {
            Some(more) if more > 0 => self.grow(more),
            _ => Ok(()),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut s = self.ledger.lock();
        let p = match self.partition {
            Partition::Serving => &mut s.serving,
            Partition::Training => &mut s.training,
        };
        p.used = p.used.saturating_sub(self.bytes);
    }
}

/// Hands the allocator's free pages back to the system. Loading a model builds large
/// transient tables (a 262,144-token vocabulary's merges, the file's metadata) in many small
/// allocations; once they are freed the heap keeps those pages resident unless told.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident set size of this process, from /proc (Linux); `None` elsewhere.
pub fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Peak resident set size of this process since it started or since the last
/// [`reset_peak_rss`] (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Starts a new peak: [`peak_rss_bytes`] then reports the highest resident size from now
/// on. False where the system cannot (then the peak is the process's lifetime peak).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_or_fail_with_both_figures() {
        let l = Ledger::new("cpu", 1000, 500);
        let a = l.reserve(Partition::Serving, 800);
        assert!(a.is_ok());
        let err = l.reserve(Partition::Serving, 300).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("300") && err.contains("200"), "{err}");
        let mut t = l.reserve(Partition::Training, 400).expect("fits");
        assert!(t.grow(200).is_err(), "training cannot grow past its partition");
        assert_eq!(l.snapshot().training.used, 400);
        drop(t);
        drop(a);
        let s = l.snapshot();
        assert_eq!((s.serving.used, s.training.used), (0, 0));
    }

    #[test]
    fn a_holder_that_outgrows_its_reservation_is_covered_or_refused() {
        let l = Ledger::new("cpu", 1000, 500);
        let _serving = l.reserve(Partition::Serving, 900).expect("fits");
        let mut job = l.reserve(Partition::Training, 300).expect("fits");
        job.cover(250).expect("used less than reserved");
        assert_eq!(job.bytes(), 300, "a reservation never shrinks");
        job.cover(450).expect("the partition has room for the growth");
        assert_eq!(l.snapshot().training.used, 450);
        let err = job.cover(700).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("training") && err.contains("250") && err.contains("50"),
            "names the growth and what is free: {err}"
        );
        let s = l.snapshot();
        assert_eq!(
            (s.training.used, s.serving.used),
            (450, 900),
            "a refused growth changes nothing, serving least of all"
        );
    }

    #[test]
    fn the_peak_resident_size_sees_an_allocation_after_a_reset() {
        if !reset_peak_rss() {
            return; // not Linux: nothing to measure
        }
        let before = process_rss_bytes().unwrap_or(0);
        let mut big = vec![0u8; 64 << 20];
        for i in (0..big.len()).step_by(4096) {
            // SAFETY: in bounds.
            unsafe { std::ptr::write_volatile(big.as_mut_ptr().add(i), 1) };
        }
        drop(big);
        let peak = peak_rss_bytes().unwrap_or(0);
        assert!(peak >= before + (60 << 20), "peak {peak} after 64 MiB touched from {before}");
    }

    #[test]
    fn partitions_larger_than_the_free_device_memory_are_refused_with_the_figures() {
        let mem = DeviceMemory { free: 100 << 30, total: 141 << 30 };
        assert!(partitions_fit(Placement::Cuda(0), mem, 60 << 30, 40 << 30).is_ok());
        let e = partitions_fit(Placement::Cuda(0), mem, 90 << 30, 20 << 30).expect_err("too large").to_string();
        for figure in [90u64 << 30, 20 << 30, 110 << 30, 100 << 30, 141 << 30] {
            assert!(e.contains(&figure.to_string()), "{e} names {figure}");
        }
        assert!(e.starts_with("cuda:0"), "{e}");
        // The CPU's partitions are the configured figures: nothing to check against.
        assert!(Ledger::for_device(Placement::Cpu, 1 << 40, 1 << 40).is_ok());
    }
}
