//! Admission control: a bounded waiting room (`--max-queue`) in front of `--max-concurrency`
//! workers. A full room answers 429 with a `Retry-After` estimated from recent generation times.
//! Leaving the room (a client gone, a deadline passed) is dropping the ticket.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Weight of the newest sample in the moving average of generation seconds: 1/8, the gain
/// RFC 6298 uses for TCP's smoothed round-trip time.
const EWMA_GAIN: f64 = 0.125;

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The waiting room is full.
    QueueFull { waiting: usize, retry_after_secs: u64 },
    /// The replica is shutting down.
    Closed,
}

/// The waiting room and the workers' permits. Shared by all requests.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    concurrency: usize,
    max_queue: usize,
    waiting: AtomicUsize,
    running: Arc<AtomicUsize>,
    closed: AtomicBool,
    ewma: Mutex<Estimate>,
}

/// Smoothed seconds per generation.
#[derive(Debug, Default, Clone, Copy)]
struct Estimate {
    /// `None` until a prior or a first sample.
    value: Option<f64>,
    /// Whether `value` is only the prior.
    prior: bool,
}

/// A place in the waiting room; dropping it leaves the room.
#[derive(Debug)]
pub struct Ticket<'a> {
    admission: &'a Admission,
    waiting: bool,
    permit: Option<OwnedSemaphorePermit>,
}

/// The right to run one generation; dropping it frees the worker.
#[derive(Debug)]
pub struct RunPermit {
    _permit: OwnedSemaphorePermit,
    running: Arc<AtomicUsize>,
}

impl Drop for RunPermit {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    /// `concurrency` is raised to at least 1.
    pub fn new(concurrency: usize, max_queue: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            max_queue,
            waiting: AtomicUsize::new(0),
            running: Arc::new(AtomicUsize::new(0)),
            closed: AtomicBool::new(false),
            ewma: Mutex::new(Estimate::default()),
        }
    }

    /// Requests waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Requests holding a worker.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Take no new requests (shutdown); those already in keep their place.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// A first guess before any real generation (from the warm-up); the first real sample
    /// replaces it rather than being averaged with it.
    pub fn set_prior(&self, seconds: f64) {
        let mut ewma = self.ewma.lock().unwrap_or_else(PoisonError::into_inner);
        if ewma.value.is_none() && seconds.is_finite() && seconds >= 0.0 {
            *ewma = Estimate {
                value: Some(seconds),
                prior: true,
            };
        }
    }

    /// Update the moving average with one generation's duration.
    pub fn record_generation(&self, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let mut ewma = self.ewma.lock().unwrap_or_else(PoisonError::into_inner);
        let value = match ewma.value {
            Some(old) if !ewma.prior => old + EWMA_GAIN * (seconds - old),
            _ => seconds,
        };
        *ewma = Estimate {
            value: Some(value),
            prior: false,
        };
    }

    /// Smoothed seconds per generation, once known.
    pub fn ewma_seconds(&self) -> Option<f64> {
        self.ewma.lock().unwrap_or_else(PoisonError::into_inner).value
    }

    /// Enter: a free worker at once, else a place in the waiting room, else refused.
    pub fn enter(&self) -> Result<Ticket<'_>, Refused> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Refused::Closed);
        }
        // Nobody waiting and a worker free: run now. (With others waiting, join the line so
        // the semaphore's FIFO order is kept.)
        if self.waiting() == 0
            && let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned()
        {
            return Ok(Ticket {
                admission: self,
                waiting: false,
                permit: Some(permit),
            });
        }
        let joined = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < self.max_queue).then_some(w + 1)
            });
        match joined {
            Ok(_) => Ok(Ticket {
                admission: self,
                waiting: true,
                permit: None,
            }),
            Err(waiting) => Err(Refused::QueueFull {
                waiting,
                retry_after_secs: retry_after_secs(self.ewma_seconds(), waiting + 1, self.concurrency),
            }),
        }
    }
}

impl Ticket<'_> {
    /// Wait for a worker (FIFO). Cancel-safe: dropping the future leaves the room.
    pub async fn wait(mut self) -> RunPermit {
        let permit = match self.permit.take() {
            Some(permit) => permit,
            // Acquiring fails only on a closed semaphore, and this one is never closed.
            None => match Arc::clone(&self.admission.permits).acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => unreachable_closed(),
            },
        };
        self.leave_room();
        self.admission.running.fetch_add(1, Ordering::SeqCst);
        RunPermit {
            _permit: permit,
            running: Arc::clone(&self.admission.running),
        }
    }

    fn leave_room(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.admission.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.leave_room();
    }
}

/// `Admission` owns its semaphore and never calls `Semaphore::close`.
#[allow(clippy::panic)]
fn unreachable_closed() -> ! {
    panic!("admission semaphore closed; it is never closed")
}

/// Seconds a refused client should wait: the smoothed generation time times the number of
/// generations ahead of it per worker, at least 1 s. Before any sample, 1 s.
pub fn retry_after_secs(ewma_seconds: Option<f64>, position: usize, concurrency: usize) -> u64 {
    let Some(each) = ewma_seconds else { return 1 };
    let rounds = position.div_ceil(concurrency.max(1)) as f64;
    let secs = (each * rounds).ceil();
    if secs.is_finite() && secs >= 1.0 {
        secs.min(u64::MAX as f64) as u64
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_grows_with_the_line_and_is_at_least_one_second() {
        let cases = [
            (None, 5, 1, 1),
            (Some(0.01), 1, 1, 1),
            (Some(2.5), 1, 1, 3),
            (Some(2.5), 4, 1, 10),
            (Some(2.5), 4, 2, 5),
            (Some(2.5), 3, 2, 5),
            (Some(f64::NAN), 3, 1, 1),
        ];
        for (ewma, position, concurrency, want) in cases {
            assert_eq!(
                retry_after_secs(ewma, position, concurrency),
                want,
                "{ewma:?} {position} {concurrency}"
            );
        }
    }

    #[test]
    fn moving_average_replaces_the_prior_with_the_first_sample_then_moves_by_an_eighth() {
        let a = Admission::new(1, 1);
        assert_eq!(a.ewma_seconds(), None);
        a.set_prior(100.0);
        assert_eq!(a.ewma_seconds(), Some(100.0));
        a.record_generation(8.0);
        assert_eq!(a.ewma_seconds(), Some(8.0));
        a.record_generation(16.0);
        assert_eq!(a.ewma_seconds(), Some(9.0));
        a.record_generation(f64::INFINITY);
        a.set_prior(1.0);
        assert_eq!(a.ewma_seconds(), Some(9.0));
    }

    #[tokio::test]
    async fn a_full_room_refuses_and_a_dropped_ticket_frees_its_place() {
        let a = Admission::new(1, 2);
        let running = a.enter().expect("first runs").wait().await;
        assert_eq!((a.running(), a.waiting()), (1, 0));
        let t1 = a.enter().expect("second waits");
        let t2 = a.enter().expect("third waits");
        assert_eq!(a.waiting(), 2);
        a.record_generation(3.0);
        assert_eq!(
            a.enter().err(),
            Some(Refused::QueueFull {
                waiting: 2,
                retry_after_secs: 9
            })
        );
        drop(t2);
        assert_eq!(a.waiting(), 1);
        let t3 = a.enter().expect("a place came free");
        drop(running);
        let second = t1.wait().await;
        assert_eq!((a.running(), a.waiting()), (1, 1));
        drop(second);
        let third = t3.wait().await;
        assert_eq!((a.running(), a.waiting()), (1, 0));
        drop(third);
        assert_eq!(a.running(), 0);
    }

    #[tokio::test]
    async fn waiting_is_first_come_first_served_and_cancel_safe() {
        let a = Arc::new(Admission::new(1, 4));
        let hold = a.enter().expect("runs").wait().await;
        let first = a.enter().expect("waits");
        let abandoned = a.enter().expect("waits");
        let last = a.enter().expect("waits");
        // A waiter whose future is dropped mid-wait gives its place back.
        let mut abandoned_wait = Box::pin(abandoned.wait());
        assert!(futures::poll!(&mut abandoned_wait).is_pending());
        drop(abandoned_wait);
        assert_eq!(a.waiting(), 2);
        let mut first_wait = Box::pin(first.wait());
        assert!(futures::poll!(&mut first_wait).is_pending());
        let mut last_wait = Box::pin(last.wait());
        assert!(futures::poll!(&mut last_wait).is_pending());
        drop(hold);
        // `first` queued before `last`: `last` may not overtake it.
        assert!(futures::poll!(&mut last_wait).is_pending());
        let got = first_wait.await;
        assert!(futures::poll!(&mut last_wait).is_pending());
        drop(got);
        let _ = last_wait.await;
        assert_eq!(a.waiting(), 0);
    }

    #[test]
    fn a_closed_room_refuses_everyone() {
        let a = Admission::new(2, 2);
        a.close();
        assert_eq!(a.enter().err(), Some(Refused::Closed));
    }
}
