//! The decoder's own threads: a leader (the caller) and helpers that run each job together and
//! spin between jobs instead of sleeping. One decode step of a small model is a few dozen
//! products of tens of microseconds each; waking a sleeping pool thread for each (rayon's
//! futex) costs more than half such a product, so splitting them over the cores only pays
//! when the other core is already awake, as llama.cpp's threads are. Helpers spin for a short
//! while after their last job (a step's serial parts, the engine's sampling between steps)
//! and then sleep, so an idle model costs no CPU.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper waits for the next job awake before it sleeps.
const STAY_AWAKE: Duration = Duration::from_millis(2);

/// Spins between looks at the clock, and between chances for other threads on this core.
const SPINS_PER_CHECK: u32 = 128;

type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// The bit of [`Shared::joined`] that closes a job to latecomers.
const CLOSED: usize = 1 << (usize::BITS - 1);

pub(crate) struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Held by the job running now; a caller that finds it taken runs its job alone.
    leader: Mutex<()>,
}

#[derive(Default)]
struct Shared {
    /// Bumped once per job, after `job` is set: helpers watch it.
    generation: AtomicUsize,
    /// The current job: a pointer to a [`Job`] on the leader's stack, which outlives the
    /// job because the leader waits for every helper to finish it before returning.
    job: AtomicPtr<()>,
    /// Helpers that joined the current job, with [`CLOSED`] set once the leader is done with
    /// its own part (no helper joins after that).
    joined: AtomicUsize,
    /// Helpers done with the current job.
    finished: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Helpers asleep on `wake` (the rest are spinning or working).
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Team {
    /// A team of `threads` (at least one: the caller), so `threads - 1` helpers.
    pub(crate) fn new(threads: usize) -> Team {
        let shared = Arc::new(Shared::default());
        let mut helpers = Vec::new();
        for member in 1..threads.max(1) {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("factory-decoder-{member}"))
                .spawn(move || help(&shared, member));
            match spawned {
                Ok(handle) => helpers.push(handle),
                // Fewer threads than asked is still a working team.
                Err(error) => eprintln!("the decoder runs with {member} threads: {error}"),
            }
        }
        Team { shared, helpers, leader: Mutex::new(()) }
    }

    /// Members of the team, the caller included.
    pub(crate) fn size(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `job(member)` on the caller (member 0) and on every helper that joins before the
    /// caller is done with its own call, and returns when all that joined are done. A helper
    /// that is not running when the job is handed out (the OS gave its core to another thread)
    /// must not hold the step up, so the caller's `job(0)` is expected to take over whatever
    /// the others have not started: see [`Team::for_each`]. A panic in any member is raised
    /// here, after all are done.
    fn run(&self, job: Job<'_>) {
        let Ok(_leading) = self.leader.try_lock() else {
            // Another caller is leading the team (two engines on one decoder): run alone.
            return job(0);
        };
        let shared = &*self.shared;
        shared.finished.store(0, Ordering::Relaxed);
        shared.job.store(&job as *const Job<'_> as *mut (), Ordering::Relaxed);
        // Opened after the job is in place: a helper that joins (Acquire) sees this job.
        shared.joined.store(0, Ordering::Release);
        // SeqCst with the sleepers' count below: either a helper going to sleep sees the new
        // generation, or this sees it asleep and wakes it.
        shared.generation.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
            shared.wake.notify_all();
        }
        let own = catch_unwind(AssertUnwindSafe(|| job(0)));
        let joined = shared.joined.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while shared.finished.load(Ordering::Acquire) < joined {
            spins = pause(spins);
        }
        shared.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        if let Err(panic) = own {
            resume_unwind(panic);
        }
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a decoder thread panicked");
        }
    }

    /// Runs `work` on every one of `parts`, each exactly once, spread over the team: member
    /// `m` starts with parts `m`, `m + size`, ..., and the caller then takes every part no
    /// helper has started.
    pub(crate) fn for_each<P: Send>(&self, parts: Vec<P>, work: impl Fn(P) + Sync) {
        let slots: Vec<Mutex<Option<P>>> = parts.into_iter().map(|part| Mutex::new(Some(part))).collect();
        let size = self.size();
        let take = |slot: &Mutex<Option<P>>| slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.run(&|member| {
            for slot in slots.iter().skip(member).step_by(size) {
                if let Some(part) = take(slot) {
                    work(part);
                }
            }
            if member == 0 {
                for slot in &slots {
                    if let Some(part) = take(slot) {
                        work(part);
                    }
                }
            }
        });
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        for helper in self.helpers.drain(..) {
            let _ = helper.join();
        }
    }
}

/// A helper's life: wait for a new generation (spinning, then asleep), run its part, repeat.
#[allow(unsafe_code)]
fn help(shared: &Shared, member: usize) {
    // Not the generation now: the first job may have been handed out before this thread ran.
    let mut seen = 0;
    loop {
        let idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                break;
            }
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            spins = pause(spins);
            if spins == 0 && idle_since.elapsed() > STAY_AWAKE {
                let mut guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                while shared.generation.load(Ordering::SeqCst) == seen && !shared.stop.load(Ordering::SeqCst) {
                    guard = shared.wake.wait(guard).unwrap_or_else(PoisonError::into_inner);
                }
                shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        // Join the job, unless the leader has already closed it (then it needs no help).
        let mut joined = shared.joined.load(Ordering::Acquire);
        loop {
            if joined & CLOSED != 0 {
                break;
            }
            match shared.joined.compare_exchange_weak(joined, joined + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => joined = now,
            }
        }
        if joined & CLOSED != 0 {
            continue;
        }
        let job = shared.job.load(Ordering::Relaxed) as *const Job<'_>;
        // SAFETY: this helper joined an open job (Acquire on `joined`, which the leader opened
        // with Release after storing the pointer), and the leader keeps that job alive on its
        // stack until every helper that joined has counted itself finished below. A helper
        // that saw an old generation but joins the next job reads that job's pointer: the
        // leader stores it before opening the job.
        let job = unsafe { *job };
        if catch_unwind(AssertUnwindSafe(|| job(member))).is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        shared.finished.fetch_add(1, Ordering::Release);
    }
}

/// One turn of a spin wait; every [`SPINS_PER_CHECK`] turns it also lets another thread on
/// this core run (the engine's other work, the server), and returns 0 so the caller can look
/// at the clock.
fn pause(spins: u32) -> u32 {
    if spins + 1 == SPINS_PER_CHECK {
        std::thread::yield_now();
        0
    } else {
        std::hint::spin_loop();
        spins + 1
    }
}
