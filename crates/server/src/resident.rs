//! The process's resident memory, sampled while a run trains: the peak of a step lies inside
//! it (activations live from the forward pass to the end of the backward pass), so a reading
//! after each step would miss it. The figure is the whole process's, server included, so the
//! reading at the start is reported beside it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the sampler reads; short beside a training step.
const INTERVAL: Duration = Duration::from_millis(20);

/// Samples until its last clone is dropped.
#[derive(Clone)]
pub struct ResidentSampler(Arc<Readings>);

struct Readings {
    at_start: u64,
    peak: AtomicU64,
}

impl ResidentSampler {
    pub fn start() -> Self {
        let at_start = resident_bytes().unwrap_or(0);
        let readings = Arc::new(Readings { at_start, peak: AtomicU64::new(at_start) });
        let watched: Weak<Readings> = Arc::downgrade(&readings);
        let spawned = std::thread::Builder::new().name("resident-sampler".into()).spawn(move || {
            while let Some(readings) = watched.upgrade() {
                if let Some(now) = resident_bytes() {
                    readings.peak.fetch_max(now, Ordering::Relaxed);
                }
                drop(readings);
                std::thread::sleep(INTERVAL);
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start sampling resident memory");
        }
        ResidentSampler(readings)
    }

    /// The highest reading so far, in bytes (0 where the system does not say).
    pub fn peak(&self) -> u64 {
        self.0.peak.load(Ordering::Relaxed)
    }

    pub fn at_start(&self) -> u64 {
        self.0.at_start
    }
}

/// `VmRSS` of this process (Linux); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_sees_memory_that_was_freed_before_it_was_read() {
        let sampler = ResidentSampler::start();
        let before = sampler.peak();
        assert!(before > 0, "this is Linux: VmRSS is readable");
        // 256 MiB, touched page by page, held for several sampling intervals, then freed.
        let mut block = vec![0u8; 256 << 20];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        std::thread::sleep(INTERVAL * 5);
        drop(std::hint::black_box(block));
        std::thread::sleep(INTERVAL * 2);
        assert!(sampler.peak() >= before + (200 << 20), "peak {} after {before}", sampler.peak());
    }
}
