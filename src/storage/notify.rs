//! Cancel-safe waits on a partition's two watermarks: the high watermark (written) and the
//! durable offset (written and fdatasync'd).
//!
//! Owned by the partition's shard; shared as `Rc<Notifier>` between the log, its writer task and
//! every pending wait, so a wait future is `'static` and outlives no lock. A wait registers its
//! waker under `(target offset, id)` only while it is pending and removes the registration when
//! it completes or is dropped: consumers long-poll idle partitions over and over, and a
//! registration per abandoned poll would grow without bound.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::StorageError;

/// Which watermark a wait is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Every offset below it is written to the segment file and readable.
    HighWatermark = 0,
    /// Every offset below it is also fdatasync'd.
    Durable = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Open,
    /// The writer hit an I/O error; the log accepts nothing more until reopened.
    Failed {
        kind: io::ErrorKind,
        message: String,
    },
    Closed,
}

#[derive(Debug)]
pub struct Notifier {
    marks: [Cell<i64>; 2],
    status: RefCell<Status>,
    /// Per mark: pending waits keyed by (target, id); a wait completes once mark >= target.
    waiters: [RefCell<BTreeMap<(i64, u64), Waker>>; 2],
    next_id: Cell<u64>,
}

impl Notifier {
    pub fn new(high_watermark: i64, durable_offset: i64) -> Rc<Notifier> {
        assert!(durable_offset <= high_watermark);
        Rc::new(Notifier {
            marks: [Cell::new(high_watermark), Cell::new(durable_offset)],
            status: RefCell::new(Status::Open),
            waiters: [RefCell::new(BTreeMap::new()), RefCell::new(BTreeMap::new())],
            next_id: Cell::new(0),
        })
    }

    pub fn get(&self, mark: Mark) -> i64 {
        self.marks[mark as usize].get()
    }

    /// Moves a watermark forward and wakes every wait it satisfies.
    pub fn advance(&self, mark: Mark, offset: i64) {
        let current = self.get(mark);
        assert!(
            offset >= current,
            "{mark:?} moved backwards: {current} -> {offset}"
        );
        if mark == Mark::Durable {
            assert!(
                offset <= self.get(Mark::HighWatermark),
                "durable offset above the high watermark"
            );
        }
        if offset == current {
            return;
        }
        self.marks[mark as usize].set(offset);
        let ready = {
            let mut waiters = self.waiters[mark as usize].borrow_mut();
            let pending = waiters.split_off(&(offset + 1, 0));
            std::mem::replace(&mut *waiters, pending)
        };
        // Wake outside the borrow: a waker may poll (and re-register) synchronously.
        ready.into_values().for_each(Waker::wake);
    }

    /// Puts the log in the failed state and releases every wait with the error.
    pub fn fail(&self, error: &io::Error) {
        let mut status = self.status.borrow_mut();
        if *status == Status::Open {
            *status = Status::Failed {
                kind: error.kind(),
                message: error.to_string(),
            };
        }
        drop(status);
        self.wake_all();
    }

    /// Releases every wait: satisfied ones succeed, the others fail with `Closed`.
    pub fn close(&self) {
        let mut status = self.status.borrow_mut();
        if *status == Status::Open {
            *status = Status::Closed;
        }
        drop(status);
        self.wake_all();
    }

    fn wake_all(&self) {
        for waiters in &self.waiters {
            let all = std::mem::take(&mut *waiters.borrow_mut());
            all.into_values().for_each(Waker::wake);
        }
    }

    /// `Some(error)` once the log failed or closed.
    pub fn status_error(&self) -> Option<StorageError> {
        match &*self.status.borrow() {
            Status::Open => None,
            Status::Failed { kind, message } => {
                Some(StorageError::Io(io::Error::new(*kind, message.clone())))
            }
            Status::Closed => Some(StorageError::Closed),
        }
    }

    /// Resolves once `mark >= target`, or with an error once the log fails or closes first.
    pub fn wait(self: &Rc<Self>, mark: Mark, target: i64) -> OffsetWait {
        OffsetWait {
            notifier: self.clone(),
            mark,
            target,
            key: None,
        }
    }

    /// Registered (pending and not yet woken) waits; for tests and metrics.
    pub fn waiter_count(&self) -> usize {
        self.waiters.iter().map(|w| w.borrow().len()).sum()
    }

    fn unregister(&self, mark: Mark, key: (i64, u64)) {
        self.waiters[mark as usize].borrow_mut().remove(&key);
    }
}

/// A wait on one watermark. Cancel-safe: dropping it removes its registration.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct OffsetWait {
    notifier: Rc<Notifier>,
    mark: Mark,
    target: i64,
    /// Set while registered (it may have been removed by a wake since; removal is idempotent).
    key: Option<(i64, u64)>,
}

impl Future for OffsetWait {
    type Output = Result<(), StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // Satisfied beats failed: data written before a failure was written.
        let outcome = if this.notifier.get(this.mark) >= this.target {
            Some(Ok(()))
        } else {
            this.notifier.status_error().map(Err)
        };
        if let Some(outcome) = outcome {
            if let Some(key) = this.key.take() {
                this.notifier.unregister(this.mark, key);
            }
            return Poll::Ready(outcome);
        }
        let key = *this.key.get_or_insert_with(|| {
            let id = this.notifier.next_id.get();
            this.notifier.next_id.set(id + 1);
            (this.target, id)
        });
        this.notifier.waiters[this.mark as usize]
            .borrow_mut()
            .insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for OffsetWait {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.notifier.unregister(self.mark, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    #[test]
    fn waits_complete_in_offset_order_and_dropped_ones_unregister() {
        block_on(async {
            let n = Notifier::new(0, 0);
            let mut a = Box::pin(n.wait(Mark::HighWatermark, 5));
            let mut b = Box::pin(n.wait(Mark::HighWatermark, 10));
            assert!(poll_once(&mut a).await.is_none());
            assert!(poll_once(&mut b).await.is_none());
            assert!(
                poll_once(&mut b).await.is_none(),
                "re-polling does not add a registration"
            );
            assert_eq!(n.waiter_count(), 2);
            n.advance(Mark::HighWatermark, 7);
            assert_eq!(n.waiter_count(), 1);
            assert!(matches!(poll_once(&mut a).await, Some(Ok(()))));
            drop(b);
            assert_eq!(n.waiter_count(), 0);
            for _ in 0..1000 {
                let mut w = Box::pin(n.wait(Mark::HighWatermark, 100));
                assert!(poll_once(&mut w).await.is_none());
            }
            assert_eq!(
                n.waiter_count(),
                0,
                "abandoned long polls leave nothing behind"
            );
        });
    }

    #[test]
    fn failure_releases_unsatisfied_waits_with_the_error() {
        block_on(async {
            let n = Notifier::new(0, 0);
            n.advance(Mark::HighWatermark, 3);
            let mut durable = Box::pin(n.wait(Mark::Durable, 3));
            assert!(poll_once(&mut durable).await.is_none());
            n.fail(&io::Error::other("disk on fire"));
            match durable.await {
                Err(StorageError::Io(e)) => assert!(e.to_string().contains("disk on fire")),
                other => panic!("unexpected {other:?}"),
            }
            assert!(
                n.wait(Mark::HighWatermark, 3).await.is_ok(),
                "written before the failure"
            );
            assert_eq!(n.waiter_count(), 0);
        });
    }
}
