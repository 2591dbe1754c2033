//! Cancel-safe waits on a partition's four watermarks: written (in the segment file), durable
//! (written and fdatasync'd), journaled (in the segment file or the shard's journal: safe from
//! the process's death, `storage::journal`) and the high watermark (consumer-visible).
//!
//! Owned by the partition's shard; shared as `Rc<Notifier>` between the log, its writer task and
//! every pending wait, so a wait future is `'static` and outlives no lock. A wait registers its
//! waker under `(target offset, id)` only while it is pending and removes the registration when
//! it completes or is dropped: consumers long-poll idle partitions over and over, and a
//! registration per abandoned poll would grow without bound.
//!
//! # The high watermark
//! An unreplicated log (no bound, the default) shows consumers everything journaled (without a
//! journal that is what is written): the high watermark follows `Journaled`. A replicated log
//! gets a bound from the replication layer (the leader's ISR minimum, or the leader's high
//! watermark on a follower) and the high watermark becomes `max(current, min(Journaled,
//! bound))`: it never moves backwards except by truncation. Followers fetch only written
//! bytes, so on a replicated log the bound keeps the high watermark at or below `Written`.
//!
//! # Journaled
//! `Written <= Journaled`: moving `Written` raises `Journaled` with it, and an append the
//! journal took raises it over the batch ([`Notifier::advance_journaled`]) only if every
//! offset below the batch is already journaled, so the mark never claims a batch that is
//! neither written nor journaled.
//!
//! # Truncation
//! A follower that removes a divergent suffix moves `Written` (and the others) backwards. A wait
//! for an offset above the cut must not later resolve because *different* data reached that
//! offset: a demoted leader's produce waiter would be told its batch was written. So every
//! wait remembers how many truncations it has seen, and on each poll checks the lowest cut made
//! since (`truncation_floors`); a wait whose target is above it fails with
//! [`StorageError::Truncated`]. This also covers a wait created before a truncation and first
//! polled after it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::StorageError;

/// Which watermark a wait is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Every offset below it is written to the segment file and readable by replicas.
    Written = 0,
    /// Every offset below it is also fdatasync'd. `Durable <= Written`.
    Durable = 1,
    /// Every offset below it is visible to consumers. `HighWatermark <= Journaled`.
    HighWatermark = 2,
    /// Every offset below it is written or in the shard's journal: it survives the process.
    /// `Written <= Journaled`; what acks=1 waits for.
    Journaled = 3,
}

const MARKS: usize = 4;

/// Truncations remembered for waits that were created before them; older ones are merged,
/// which can only make a wait fail spuriously (never succeed wrongly). Truncations happen once
/// per leader change, and a wait spans a handful at most.
const MAX_TRUNCATION_FLOORS: usize = 64;

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
    marks: [Cell<i64>; MARKS],
    /// `None`: the high watermark follows `Written`. `Some(b)`: it rises to `min(Written, b)`.
    high_watermark_bound: Cell<Option<i64>>,
    status: RefCell<Status>,
    /// Per mark: pending waits keyed by (target, id); a wait completes once mark >= target.
    waiters: [RefCell<BTreeMap<(i64, u64), Waker>>; MARKS],
    next_id: Cell<u64>,
    /// Truncations so far.
    truncations: Cell<u64>,
    /// `(truncation number, floor)`: offsets at and above `floor` were removed by that
    /// truncation. Both strictly increase along the list (a lower, later floor replaces the
    /// entries it dominates), so the lowest floor of the truncations after `n` is the floor of
    /// the first entry numbered above `n`.
    truncation_floors: RefCell<Vec<(u64, i64)>>,
    /// Journaled batches `[base, end)` above `Journaled`, in offset order: a batch the journal
    /// had no room for left a gap below them, and once its write closes the gap the mark
    /// moves over them too (else one full ring would leave the log waiting for its writes
    /// until its queue ran dry).
    journaled_above: RefCell<VecDeque<(i64, i64)>>,
}

impl Notifier {
    /// A notifier whose high watermark follows `Journaled` (no bound).
    pub fn new(written: i64, durable: i64) -> Rc<Notifier> {
        assert!(
            durable <= written,
            "durable offset {durable} above written {written}"
        );
        Rc::new(Notifier {
            marks: [
                Cell::new(written),
                Cell::new(durable),
                Cell::new(written),
                Cell::new(written),
            ],
            high_watermark_bound: Cell::new(None),
            status: RefCell::new(Status::Open),
            waiters: [
                RefCell::new(BTreeMap::new()),
                RefCell::new(BTreeMap::new()),
                RefCell::new(BTreeMap::new()),
                RefCell::new(BTreeMap::new()),
            ],
            next_id: Cell::new(0),
            truncations: Cell::new(0),
            truncation_floors: RefCell::new(Vec::new()),
            journaled_above: RefCell::new(VecDeque::new()),
        })
    }

    pub fn get(&self, mark: Mark) -> i64 {
        self.marks[mark as usize].get()
    }

    pub fn high_watermark_bound(&self) -> Option<i64> {
        self.high_watermark_bound.get()
    }

    /// Moves `Written` or `Durable` forward and wakes every wait it satisfies; moving `Written`
    /// also moves `Journaled` (if behind) and the high watermark as far as its bound allows.
    pub fn advance(&self, mark: Mark, offset: i64) {
        assert!(
            mark == Mark::Written || mark == Mark::Durable,
            "{mark:?} does not move through advance"
        );
        if mark == Mark::Durable {
            assert!(
                offset <= self.get(Mark::Written),
                "durable offset {offset} above the written offset {}",
                self.get(Mark::Written)
            );
        }
        self.raise(mark, offset);
        if mark == Mark::Written {
            if self.get(Mark::Journaled) < offset {
                self.raise_journaled(offset);
            }
            self.raise_high_watermark();
        }
    }

    /// Raises `Journaled` to `offset` and on over the journaled batches that follow it.
    fn raise_journaled(&self, offset: i64) {
        let mut to = offset;
        {
            let mut above = self.journaled_above.borrow_mut();
            while let Some(&(base, end)) = above.front() {
                if base > to {
                    break;
                }
                to = to.max(end);
                above.pop_front();
            }
        }
        self.raise(Mark::Journaled, to);
    }

    /// The batch `[from, to)` is in the shard's journal: `Journaled` moves to `to` if it stood
    /// at `from` (every offset below the batch is journaled or written); else an earlier batch
    /// the journal had no room for is below it, and the mark moves over this one when that
    /// one's write reaches it.
    pub fn advance_journaled(&self, from: i64, to: i64) {
        assert!(from < to, "an empty batch [{from}, {to})");
        let journaled = self.get(Mark::Journaled);
        if journaled == from {
            self.raise_journaled(to);
            self.raise_high_watermark();
        } else if journaled < from {
            self.journaled_above.borrow_mut().push_back((from, to));
        }
    }

    /// Sets the bound of the high watermark (see the module docs) and applies it at once.
    pub fn set_high_watermark_bound(&self, bound: Option<i64>) {
        self.high_watermark_bound.set(bound);
        self.raise_high_watermark();
    }

    /// Lowers (or raises) the high watermark to `offset` clamped to `[floor, Journaled]`,
    /// waking nothing that is not satisfied: for a log reopened as a replica, whose high
    /// watermark starts at `Journaled` only because that is the unreplicated default.
    pub fn reset_high_watermark(&self, offset: i64, floor: i64) {
        let written = self.get(Mark::Journaled);
        let high_watermark = offset.clamp(floor.min(written), written);
        if high_watermark >= self.get(Mark::HighWatermark) {
            self.raise(Mark::HighWatermark, high_watermark);
        } else {
            self.marks[Mark::HighWatermark as usize].set(high_watermark);
        }
    }

    fn raise_high_watermark(&self) {
        let written = self.get(Mark::Journaled);
        let candidate = match self.high_watermark_bound.get() {
            None => written,
            Some(bound) => written.min(bound),
        };
        if candidate > self.get(Mark::HighWatermark) {
            self.raise(Mark::HighWatermark, candidate);
        }
    }

    fn raise(&self, mark: Mark, offset: i64) {
        let current = self.get(mark);
        assert!(
            offset >= current,
            "{mark:?} moved backwards: {current} -> {offset}"
        );
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

    /// Records a truncation that removed every offset at and above `floor`, sets the marks
    /// (which may move backwards, or forwards for a log restarted at a higher offset) and
    /// wakes every wait above `floor`: those fail with `Truncated` when polled.
    pub fn truncate(&self, floor: i64, written: i64, durable: i64, high_watermark: i64) {
        assert!(
            durable <= written && high_watermark <= written,
            "marks after truncation: written {written}, durable {durable}, high watermark {high_watermark}"
        );
        let number = self.truncations.get() + 1;
        self.truncations.set(number);
        {
            let mut floors = self.truncation_floors.borrow_mut();
            while floors.last().is_some_and(|&(_, f)| f >= floor) {
                floors.pop();
            }
            floors.push((number, floor));
            if floors.len() > MAX_TRUNCATION_FLOORS {
                // Merge the two oldest: their later number with their lower floor.
                let (_, lowest) = floors.remove(0);
                floors[0].1 = lowest;
            }
        }
        self.marks[Mark::Written as usize].set(written);
        self.marks[Mark::Journaled as usize].set(written);
        self.journaled_above.borrow_mut().clear();
        self.marks[Mark::Durable as usize].set(durable);
        self.marks[Mark::HighWatermark as usize].set(high_watermark);
        let mut woken = Vec::new();
        for waiters in &self.waiters {
            let mut waiters = waiters.borrow_mut();
            let above = waiters.split_off(&(floor.saturating_add(1), 0));
            woken.extend(above.into_values());
        }
        woken.into_iter().for_each(Waker::wake);
    }

    /// The lowest floor of the truncations after the first `seen`, if any.
    fn floor_since(&self, seen: u64) -> Option<i64> {
        if seen == self.truncations.get() {
            return None;
        }
        let floors = self.truncation_floors.borrow();
        let i = floors.partition_point(|&(number, _)| number <= seen);
        floors.get(i).map(|&(_, floor)| floor)
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

    /// Whether the log has neither failed nor closed.
    pub fn is_open(&self) -> bool {
        *self.status.borrow() == Status::Open
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

    /// Resolves once `mark >= target`, or with an error once the log fails or closes first, or
    /// once a truncation made after this call removes `target - 1`.
    pub fn wait(self: &Rc<Self>, mark: Mark, target: i64) -> OffsetWait {
        OffsetWait {
            notifier: self.clone(),
            mark,
            target,
            truncations_seen: self.truncations.get(),
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
    /// Truncations already accounted for: those before the wait was created, or checked since.
    truncations_seen: u64,
    /// Set while registered (it may have been removed by a wake since; removal is idempotent).
    key: Option<(i64, u64)>,
}

impl Future for OffsetWait {
    type Output = Result<(), StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // Truncated beats satisfied: the mark may have passed the target again with other data.
        let truncated = match this.notifier.floor_since(this.truncations_seen) {
            Some(floor) if floor < this.target => Some(Err(StorageError::Truncated {
                offset: this.target - 1,
                log_end: floor,
            })),
            _ => None,
        };
        this.truncations_seen = this.notifier.truncations.get();
        // Satisfied beats failed: data written before a failure was written.
        let outcome = truncated.or_else(|| {
            if this.notifier.get(this.mark) >= this.target {
                Some(Ok(()))
            } else {
                this.notifier.status_error().map(Err)
            }
        });
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

    /// A batch the journal had no room for holds the journaled mark (and the high watermark)
    /// until its write, and the journaled batches after it are covered the moment it lands:
    /// one full ring must not leave the log waiting for every later write.
    #[test]
    fn a_batch_the_journal_could_not_take_holds_the_mark_until_its_write() {
        let n = Notifier::new(0, 0);
        n.advance_journaled(0, 10);
        assert_eq!(n.get(Mark::Journaled), 10);
        // [10, 20) not journaled; [20, 30) and [40, 50) are, [30, 40) not.
        n.advance_journaled(20, 30);
        n.advance_journaled(40, 50);
        assert_eq!(n.get(Mark::Journaled), 10);
        assert_eq!(n.get(Mark::HighWatermark), 10);
        n.advance(Mark::Written, 15);
        assert_eq!(n.get(Mark::Journaled), 15);
        n.advance(Mark::Written, 20);
        assert_eq!(
            n.get(Mark::Journaled),
            30,
            "over the journaled batch after the gap"
        );
        assert_eq!(n.get(Mark::HighWatermark), 30);
        n.advance(Mark::Written, 40);
        assert_eq!(n.get(Mark::Journaled), 50);
        n.advance_journaled(50, 60);
        assert_eq!(n.get(Mark::Journaled), 60);
        n.advance(Mark::Written, 60);
        assert_eq!(n.get(Mark::Journaled), 60);
        assert!(n.journaled_above.borrow().is_empty());
    }

    #[test]
    fn waits_complete_in_offset_order_and_dropped_ones_unregister() {
        block_on(async {
            let n = Notifier::new(0, 0);
            let mut a = Box::pin(n.wait(Mark::Written, 5));
            let mut b = Box::pin(n.wait(Mark::Written, 10));
            assert!(poll_once(&mut a).await.is_none());
            assert!(poll_once(&mut b).await.is_none());
            assert!(
                poll_once(&mut b).await.is_none(),
                "re-polling does not add a registration"
            );
            assert_eq!(n.waiter_count(), 2);
            n.advance(Mark::Written, 7);
            assert_eq!(n.waiter_count(), 1);
            assert!(matches!(poll_once(&mut a).await, Some(Ok(()))));
            drop(b);
            assert_eq!(n.waiter_count(), 0);
            for _ in 0..1000 {
                let mut w = Box::pin(n.wait(Mark::Written, 100));
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
            n.advance(Mark::Written, 3);
            let mut durable = Box::pin(n.wait(Mark::Durable, 3));
            assert!(poll_once(&mut durable).await.is_none());
            n.fail(&io::Error::other("disk on fire"));
            match durable.await {
                Err(StorageError::Io(e)) => assert!(e.to_string().contains("disk on fire")),
                other => panic!("unexpected {other:?}"),
            }
            assert!(
                n.wait(Mark::Written, 3).await.is_ok(),
                "written before the failure"
            );
            assert_eq!(n.waiter_count(), 0);
        });
    }

    #[test]
    fn the_high_watermark_follows_written_until_bounded_and_never_moves_back() {
        block_on(async {
            let n = Notifier::new(10, 0);
            assert_eq!(n.get(Mark::HighWatermark), 10, "unbounded: follows written");
            n.advance(Mark::Written, 12);
            assert_eq!(n.get(Mark::HighWatermark), 12);

            n.set_high_watermark_bound(Some(5));
            assert_eq!(
                n.get(Mark::HighWatermark),
                12,
                "a lower bound never lowers it"
            );
            n.advance(Mark::Written, 20);
            assert_eq!(n.get(Mark::HighWatermark), 12);
            let mut visible = Box::pin(n.wait(Mark::HighWatermark, 15));
            assert!(poll_once(&mut visible).await.is_none());
            n.set_high_watermark_bound(Some(30));
            assert_eq!(n.get(Mark::HighWatermark), 20, "min(written, bound)");
            assert!(matches!(poll_once(&mut visible).await, Some(Ok(()))));
            n.advance(Mark::Written, 25);
            assert_eq!(
                n.get(Mark::HighWatermark),
                25,
                "applied as written advances"
            );
            n.advance(Mark::Written, 40);
            assert_eq!(n.get(Mark::HighWatermark), 30);

            n.set_high_watermark_bound(None);
            assert_eq!(n.get(Mark::HighWatermark), 40, "unbounded again");

            n.reset_high_watermark(15, 0);
            assert_eq!(n.get(Mark::HighWatermark), 15);
            n.reset_high_watermark(100, 0);
            assert_eq!(n.get(Mark::HighWatermark), 40, "clamped to written");
        });
    }

    #[test]
    fn truncation_fails_waits_above_the_cut_even_if_data_returns() {
        block_on(async {
            let n = Notifier::new(0, 0);
            n.set_high_watermark_bound(Some(4));
            n.advance(Mark::Written, 10);
            let mut above = Box::pin(n.wait(Mark::Written, 12));
            let mut durable_below = Box::pin(n.wait(Mark::Durable, 6));
            let mut visible_below = Box::pin(n.wait(Mark::HighWatermark, 5));
            let mut visible_above = Box::pin(n.wait(Mark::HighWatermark, 9));
            for w in [
                &mut above,
                &mut durable_below,
                &mut visible_below,
                &mut visible_above,
            ] {
                assert!(poll_once(w).await.is_none());
            }
            // Created before the truncation, first polled after it.
            let mut unpolled = Box::pin(n.wait(Mark::Written, 8));

            n.truncate(7, 7, 7, 4);
            assert_eq!(
                (
                    n.get(Mark::Written),
                    n.get(Mark::Durable),
                    n.get(Mark::HighWatermark)
                ),
                (7, 7, 4)
            );
            // Different data reaches offsets 7.. again.
            n.advance(Mark::Written, 20);
            n.set_high_watermark_bound(Some(20));
            for (name, w) in [
                ("above", &mut above),
                ("visible above", &mut visible_above),
                ("unpolled", &mut unpolled),
            ] {
                match poll_once(w).await {
                    Some(Err(StorageError::Truncated { log_end: 7, .. })) => {}
                    other => panic!("{name}: {other:?}"),
                }
            }
            assert!(matches!(poll_once(&mut durable_below).await, Some(Ok(()))));
            assert!(matches!(poll_once(&mut visible_below).await, Some(Ok(()))));
            assert!(
                n.wait(Mark::Written, 12).await.is_ok(),
                "created after the cut"
            );
            assert_eq!(n.waiter_count(), 0);
        });
    }

    #[test]
    fn a_wait_across_several_truncations_sees_the_lowest_cut() {
        block_on(async {
            let n = Notifier::new(100, 100);
            let mut at_50 = Box::pin(n.wait(Mark::HighWatermark, 150));
            let mut at_30 = Box::pin(n.wait(Mark::Written, 130));
            n.truncate(60, 60, 60, 60);
            let mut after_first = Box::pin(n.wait(Mark::Written, 90));
            n.truncate(80, 80, 80, 60); // cannot happen without appends between; floors still work
            n.truncate(20, 20, 20, 20);
            n.advance(Mark::Written, 200);
            for w in [&mut at_50, &mut at_30, &mut after_first] {
                assert!(matches!(
                    poll_once(w).await,
                    Some(Err(StorageError::Truncated { log_end: 20, .. }))
                ));
            }
            // Many truncations: the floors list stays bounded.
            for i in 0..1000 {
                n.truncate(1000 + i, 200, 200, 200);
            }
            assert!(n.truncation_floors.borrow().len() <= MAX_TRUNCATION_FLOORS);
            let mut late = Box::pin(n.wait(Mark::Written, 300));
            assert!(poll_once(&mut late).await.is_none());
            n.advance(Mark::Written, 300);
            assert!(matches!(poll_once(&mut late).await, Some(Ok(()))));
        });
    }
}
