//! A team for short steps: while one forward runs, the pool's other threads stay awake beside
//! the thread that runs it and share out the tasks of its parallel loops.
//!
//! A decode step of one stream runs some hundred parallel loops (each matrix product, each
//! layer's attention), each a few tens of microseconds long. Through rayon, each loop splits
//! into jobs on the caller's deque, a sleeping worker is woken (a futex) and steals them, and
//! the caller sleeps again when it waits for the stolen half: on 2 cores that came to a tenth
//! of each thread's time in a decode step. Here a loop is published with one atomic store, the
//! helpers are already spinning on it, each thread runs its own contiguous share of the tasks
//! and then what is left of the others' (so a slower thread is helped), and the caller spins
//! until the last one is done. ggml runs every op of its graph this way.
//!
//! Outside a team (many streams, prompts: long loops where rayon's cost is small and its
//! stealing balances better) [`for_each`] is rayon's loop.

use rayon::prelude::*;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// A loop's body as the helpers see it: a thin pointer to the caller's `&dyn Fn`.
type Body<'a> = &'a (dyn Fn(usize) + Sync);

/// The state one forward's team shares. It outlives every loop of the forward, so a helper
/// late to a loop touches only atomics that are still there; the loop's body, which lives on
/// the caller's stack, is only reached through a claimed task (see [`Team::claim`]).
struct Team {
    /// The current loop's generation: a helper that sees it change takes part.
    generation: AtomicU32,
    /// Each member's share of the current loop: a contiguous range of tasks, so each thread
    /// streams its own stretch of a matrix's rows (interleaved claims ran 2% slower). A member
    /// takes its own range from the front, then the others' from the back.
    ranges: Vec<Range>,
    /// The current loop's body, written before its generation is published.
    body: AtomicPtr<()>,
    /// Tasks of the current loop that have returned.
    done: AtomicUsize,
    /// A task panicked: the caller panics in its place once the loop is over.
    panicked: AtomicBool,
    /// The forward is over: the helpers return to the pool.
    finished: AtomicBool,
}

/// One member's range of tasks, `front..back`, with the loop's generation, in one word:
/// claiming is one compare-and-swap on all three, so a claim made for a loop that has since
/// ended fails, and no helper runs a body that has gone. Its own cache line: a member claims
/// from its range without touching the others'.
#[repr(align(64))]
struct Range(AtomicU64);

const FIELD: u32 = 20;
const FIELD_MASK: u64 = (1 << FIELD) - 1;
/// Loops with more tasks than the packed word holds go to rayon.
const MAX_TASKS: usize = 1 << FIELD;
const GENERATION_MASK: u32 = (1 << (64 - 2 * FIELD)) - 1;

fn pack(generation: u32, front: usize, back: usize) -> u64 {
    (u64::from(generation) << (2 * FIELD)) | ((front as u64) << FIELD) | back as u64
}

fn unpack(word: u64) -> (u32, usize, usize) {
    (
        (word >> (2 * FIELD)) as u32,
        ((word >> FIELD) & FIELD_MASK) as usize,
        (word & FIELD_MASK) as usize,
    )
}

#[derive(Clone, Copy)]
enum End {
    Front,
    Back,
}

thread_local! {
    /// The team this thread leads, with the last generation it published; null outside one.
    static LEADING: Cell<(*const Team, u32)> = const { Cell::new((std::ptr::null(), 0)) };
}

/// Spins between looks at the generation, after an idle helper has found no rayon job either.
const IDLE_SPINS: usize = 16;

impl Team {
    fn new(members: usize) -> Self {
        Self {
            generation: AtomicU32::new(0),
            ranges: (0..members).map(|_| Range(AtomicU64::new(0))).collect(),
            body: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        }
    }

    /// Member `me`'s part of loop `generation`: its own range, then what is left of the
    /// others'.
    fn work(&self, generation: u32, me: usize) {
        let members = self.ranges.len();
        while let Some(task) = self.claim(me, generation, End::Front) {
            self.execute(task);
        }
        for other in (1..members).map(|k| (me + k) % members) {
            while let Some(task) = self.claim(other, generation, End::Back) {
                self.execute(task);
            }
        }
    }

    /// A task of `member`'s range in loop `generation`, from `end`; none once it is empty or
    /// the loop is over.
    fn claim(&self, member: usize, generation: u32, end: End) -> Option<usize> {
        let range = &self.ranges[member].0;
        let mut word = range.load(Ordering::Acquire);
        loop {
            let (g, front, back) = unpack(word);
            if g != generation || front >= back {
                return None;
            }
            let (claimed, task) = match end {
                End::Front => (pack(g, front + 1, back), front),
                End::Back => (pack(g, front, back - 1), back - 1),
            };
            match range.compare_exchange_weak(word, claimed, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(task),
                Err(now) => word = now,
            }
        }
    }

    /// Runs a claimed task.
    fn execute(&self, task: usize) {
        // Safety: the task was claimed in the current generation before the range was empty,
        // so the loop's caller is still waiting for it (it returns only once `done` counts
        // every task) and the body it published before the generation is alive.
        let body = unsafe { *(self.body.load(Ordering::Relaxed) as *const Body<'_>) };
        if catch_unwind(AssertUnwindSafe(|| body(task))).is_err() {
            self.panicked.store(true, Ordering::Relaxed);
        }
        self.done.fetch_add(1, Ordering::Release);
    }

    /// A helper's life: take part in each loop as it is published, and run rayon's jobs
    /// between loops (the forward still runs some of its work through rayon).
    fn help(&self, me: usize) {
        let mut seen = 0u32;
        while !self.finished.load(Ordering::Acquire) {
            let generation = self.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                self.work(generation, me);
                continue;
            }
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                for _ in 0..IDLE_SPINS {
                    std::hint::spin_loop();
                }
            }
        }
    }

    /// Publishes `body` over `0..tasks` as loop `generation`, works on it as member 0, and
    /// returns once every task has.
    fn run(&self, generation: u32, tasks: usize, body: Body<'_>) {
        self.body
            .store(&body as *const Body<'_> as *mut (), Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        let members = self.ranges.len();
        for (m, range) in self.ranges.iter().enumerate() {
            let share = (m * tasks / members, (m + 1) * tasks / members);
            range
                .0
                .store(pack(generation, share.0, share.1), Ordering::Relaxed);
        }
        self.generation.store(generation, Ordering::Release);
        self.work(generation, 0);
        while self.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        if self.panicked.swap(false, Ordering::Relaxed) {
            panic!("a task of a parallel loop panicked");
        }
    }
}

/// Runs `f` (on a worker of a rayon pool) with the pool's other workers as its team until `f`
/// returns; elsewhere (no pool, one thread) it is the plain call.
pub fn with_team<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let others = rayon::current_num_threads().saturating_sub(1);
    if others == 0 || rayon::current_thread_index().is_none() || leading().is_some() {
        return f();
    }
    let team = Team::new(others + 1);
    let started = AtomicUsize::new(0);
    rayon::scope(|scope| {
        for _ in 0..others {
            scope.spawn(|_| {
                let me = 1 + started.fetch_add(1, Ordering::AcqRel);
                team.help(me);
            });
        }
        // Every helper must have left this thread's deque before `f` runs: a helper taken up
        // by this thread while it waits inside `f` would spin until `f` returns.
        while started.load(Ordering::Acquire) < others {
            std::hint::spin_loop();
        }
        // Whether `f` returns or panics, the helpers are let go and the thread leads no more.
        struct Lead<'a>(&'a Team);
        impl Drop for Lead<'_> {
            fn drop(&mut self) {
                LEADING.set((std::ptr::null(), 0));
                self.0.finished.store(true, Ordering::Release);
            }
        }
        let _lead = Lead(&team);
        LEADING.set((&team as *const Team, 0));
        f()
    })
}

/// The team this thread leads, if any.
fn leading() -> Option<*const Team> {
    let (team, _) = LEADING.get();
    (!team.is_null()).then_some(team)
}

/// `body(i)` for every `i` in `0..tasks`, in parallel: on this thread's team if it leads one,
/// else on rayon's pool.
pub fn for_each(tasks: usize, body: impl Fn(usize) + Sync) {
    let (team, generation) = LEADING.get();
    if team.is_null() || tasks <= 1 || tasks > MAX_TASKS {
        let body = &body;
        return (0..tasks).into_par_iter().for_each(|i| body(i));
    }
    // Never 0: a helper starts out having seen generation 0.
    let generation = (generation.wrapping_add(1) & GENERATION_MASK).max(1);
    // A loop inside a task (this thread's share) goes to rayon: the team is busy with this one.
    LEADING.set((std::ptr::null(), generation));
    struct Restore(*const Team, u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEADING.set((self.0, self.1));
        }
    }
    let _restore = Restore(team, generation);
    // Safety: `team` was set by `with_team`, whose frame (and the team in it) outlives this
    // call, and is cleared there before the team goes.
    unsafe { &*team }.run(generation, tasks, &body);
}

/// Whether loops on this thread go to a team (see [`for_each`]): its callers may then cut
/// their work finer.
pub fn in_team() -> bool {
    leading().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn every_task_runs_once_in_every_loop_and_the_helpers_stop_after() {
        let pool = pool(3);
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        for round in 0..20 {
            let counts: Vec<AtomicU32> = (0..1000).map(|_| AtomicU32::new(0)).collect();
            pool.install(|| {
                with_team(|| {
                    assert!(in_team());
                    for size in [2, 7, 64, 1000] {
                        for_each(size, |i| {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                            threads.lock().unwrap().insert(std::thread::current().id());
                            // Long enough that a helper has time to claim some.
                            std::hint::black_box((0..2000).sum::<u64>());
                        });
                    }
                    // rayon's loops still run inside the team.
                    let sum: u64 = (0..10_000u64).into_par_iter().map(|i| i * round).sum();
                    assert_eq!(sum, round * (0..10_000u64).sum::<u64>());
                })
            });
            let expected = |i: usize| [2, 7, 64, 1000].iter().filter(|&&s| i < s).count() as u32;
            for (i, c) in counts.iter().enumerate() {
                assert_eq!(c.load(Ordering::Relaxed), expected(i), "task {i}");
            }
        }
        assert!(
            threads.lock().unwrap().len() > 1,
            "no helper ever took a task"
        );
        assert!(!pool.install(in_team));
    }

    #[test]
    fn a_loop_inside_a_task_and_a_team_inside_a_team_still_run() {
        pool(2).install(|| {
            with_team(|| {
                let total = AtomicUsize::new(0);
                for_each(4, |_| {
                    for_each(5, |_| {
                        total.fetch_add(1, Ordering::Relaxed);
                    });
                });
                assert_eq!(total.load(Ordering::Relaxed), 20);
                assert_eq!(with_team(|| 3), 3);
            })
        });
        // Outside a pool, both are plain calls.
        assert_eq!(with_team(|| 7), 7);
        let total = AtomicUsize::new(0);
        for_each(9, |i| {
            total.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 36);
    }

    #[test]
    fn a_panic_in_a_task_reaches_the_caller_and_the_team_ends() {
        let pool = pool(2);
        let result = pool.install(|| {
            catch_unwind(AssertUnwindSafe(|| {
                with_team(|| {
                    for_each(64, |i| {
                        std::hint::black_box((0..5000).sum::<u64>());
                        if i == 40 {
                            panic!("task 40");
                        }
                    })
                })
            }))
        });
        assert!(result.is_err());
        // The pool is whole afterwards.
        assert_eq!(pool.install(|| with_team(|| 5)), 5);
        assert!(!pool.install(in_team));
    }
}
