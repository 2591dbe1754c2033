//! The fault phase: crashes, clean stops, restarts, pauses, network partitions and weather, and its
//! end.

use super::*;

impl Sim {
    pub(super) fn fault(&mut self) {
        let n = self.rng.below(self.nodes.len() as u64) as usize;
        match self.rng.below(100) {
            0..=19 => {
                if self.nodes[n].up() {
                    self.crash(n, "crash (kill -9)");
                    let after = 100 + self.rng.below(3_000);
                    self.schedule_restart(n, after);
                } else if !self.nodes[n].restart_due {
                    self.schedule_restart(n, 0);
                }
            }
            20..=26 => {
                if self.nodes[n].running() {
                    self.clean_stop(n);
                }
            }
            27..=41 => {
                if self.nodes[n].running() {
                    let pause = 100 + self.rng.below(2 * self.config.session_timeout_ms + 500);
                    self.pause(n, pause);
                }
            }
            42..=71 => self.partition(),
            72..=83 => self.change_weather(),
            84..=91 => {
                if self.nodes[n].running() {
                    let writes = self.rng.below(4) as u32;
                    self.nodes[n].disk.borrow_mut().crash_after_writes = Some(writes);
                    self.note(format!("node {n}: dies within {writes} disk writes"), None);
                }
            }
            _ => {
                // Restart whatever is down, so the cluster is not starved for long.
                for n in 0..self.nodes.len() {
                    if !self.nodes[n].up() && !self.nodes[n].restart_due {
                        let after = self.rng.below(500);
                        self.schedule_restart(n, after);
                    }
                }
            }
        }
    }

    pub(super) fn schedule_restart(&mut self, n: usize, delay_ms: u64) {
        self.nodes[n].restart_due = true;
        self.schedule(delay_ms, Event::Restart { node: n });
    }

    pub(super) fn crash(&mut self, n: usize, why: &str) {
        self.stats.crashes += 1;
        let node = &mut self.nodes[n];
        node.quorum = None;
        node.generation += 1;
        node.session_token += 1;
        node.paused_until_ms = None;
        node.inbox.clear();
        node.clients.clear();
        node.registered = false;
        node.session = Session::Idle;
        node.observed_index = None;
        node.restart_due = false;
        node.stopping = false;
        node.disk.borrow_mut().crash();
        self.note(format!("node {n}: {why}"), None);
    }

    /// `Coordinator::unregister` then exit: the broker fences its own session first.
    pub(super) fn clean_stop(&mut self, n: usize) {
        self.stats.clean_stops += 1;
        let node = &self.nodes[n];
        let command = Command::FenceBroker {
            node_id: node.id,
            incarnation: node.incarnation,
        };
        let was_registered = node.registered;
        self.nodes[n].stopping = true;
        if was_registered {
            if let Ok(proposal) = self.quorum(n).propose(command.clone()) {
                self.await_outcome(n, proposal, command);
            }
        }
        self.note(format!("node {n}: clean stop"), Some(n));
        self.after_input(n, Ok(()));
        let generation = self.nodes[n].generation;
        let exit_after = if was_registered {
            50 + self.rng.below(1_500)
        } else {
            0
        };
        self.schedule(
            exit_after,
            Event::Crash {
                node: n,
                generation,
            },
        );
        let restart_after = exit_after + 200 + self.rng.below(2_000);
        self.schedule_restart(n, restart_after);
    }

    pub(super) fn restart(&mut self, n: usize) {
        let incarnation = self.rng.next_u64();
        let seed = self.rng.next_u64();
        let (recovered, disk_commit) = {
            let disk = self.nodes[n].disk.borrow();
            (disk.written.recovered(), disk.written.hard_state.commit)
        };
        let mut quorum_config = QuorumConfig::new(
            self.nodes[n].id,
            self.voters.clone(),
            self.config.session_timeout_ms,
        );
        quorum_config.snapshot_every_entries = self.config.snapshot_every_entries;
        self.checker
            .incarnations
            .entry(self.nodes[n].id)
            .or_default()
            .insert(incarnation);
        let disk = Box::new(SimDiskHandle(self.nodes[n].disk.clone()));
        // The process clock starts at zero, as `Coordinator::open` passes `now_ms = 0`.
        let opened = QuorumNode::open(quorum_config, incarnation, seed, recovered, disk, 0);
        let quorum = match opened {
            Ok(quorum) => quorum,
            Err(e) => {
                self.fail(format!("node {n}: restart failed: {e}"));
                return;
            }
        };
        let applied = quorum.applied_index();
        let node = &mut self.nodes[n];
        node.quorum = Some(quorum);
        node.generation += 1;
        node.started_at_ms = self.now_ms;
        node.incarnation = incarnation;
        node.registered = false;
        node.session = Session::Idle;
        node.restart_due = false;
        node.observed_index = None;
        let generation = node.generation;
        self.note(
            format!("node {n}: start, incarnation {incarnation:x}, disk commit {disk_commit}"),
            Some(n),
        );
        if applied < disk_commit {
            self.fail(format!(
                "node {n}: restarted at applied index {applied}, below the commit index \
                 {disk_commit} its disk held"
            ));
            return;
        }
        self.after_input(n, Ok(()));
        self.schedule(
            1,
            Event::Tick {
                node: n,
                generation,
            },
        );
        self.schedule_session(n, 0);
        if self.config.disk_fault != DiskFault::None {
            let next = 1_000 + self.rng.below(3_000);
            self.schedule(next, Event::WriteBack { node: n });
        }
    }

    pub(super) fn pause(&mut self, n: usize, pause_ms: u64) {
        self.stats.pauses += 1;
        let node = &mut self.nodes[n];
        node.generation += 1;
        node.paused_until_ms = Some(self.now_ms + pause_ms);
        let generation = node.generation;
        self.note(format!("node {n}: paused for {pause_ms} ms"), None);
        self.schedule(
            pause_ms,
            Event::Resume {
                node: n,
                generation,
            },
        );
    }

    pub(super) fn resume(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.paused_until_ms = None;
        node.generation += 1;
        let generation = node.generation;
        let inbox = std::mem::take(&mut node.inbox);
        self.note(
            format!("node {n}: resumed with {} queued messages", inbox.len()),
            Some(n),
        );
        // After SIGCONT the timer and the sockets race; either may go first.
        let tick_first = self.rng.below(2) == 0;
        if tick_first {
            self.schedule(
                0,
                Event::Tick {
                    node: n,
                    generation,
                },
            );
        }
        for (from, message) in inbox {
            if self.failure.is_some() || !self.nodes[n].running() {
                return;
            }
            self.deliver(from, self.nodes[n].id, message);
        }
        if !tick_first {
            self.schedule(
                0,
                Event::Tick {
                    node: n,
                    generation,
                },
            );
        }
        // The session loop's overdue timer fires at once.
        self.schedule_session(n, 0);
    }

    pub(super) fn partition(&mut self) {
        self.stats.partitions += 1;
        let count = self.nodes.len() as i32;
        let mut links = Vec::new();
        match self.rng.below(3) {
            0 => {
                // Isolate one node both ways.
                let lone = self.rng.below(count as u64) as i32;
                for other in (0..count).filter(|&o| o != lone) {
                    links.push((lone, other));
                    links.push((other, lone));
                }
            }
            1 => {
                // Split in two random groups.
                let side: Vec<bool> = (0..count).map(|_| self.rng.below(2) == 0).collect();
                for a in 0..count {
                    for b in 0..count {
                        if side[a as usize] != side[b as usize] {
                            links.push((a, b));
                        }
                    }
                }
            }
            _ => {
                // One way only: a sends, b does not hear (a firewall rule, a half-dead link).
                let a = self.rng.below(count as u64) as i32;
                let b = (a + 1 + self.rng.below(count as u64 - 1) as i32) % count;
                links.push((a, b));
            }
        }
        for link in &links {
            *self.cut.entry(*link).or_default() += 1;
        }
        let heal_after = 200 + self.rng.below(5_000);
        self.note(
            format!("partition for {heal_after} ms, cut {links:?}"),
            None,
        );
        self.schedule(heal_after, Event::Heal { links });
    }

    pub(super) fn change_weather(&mut self) {
        const DROPS: [u64; 5] = [0, 10, 50, 100, 300];
        const DUPLICATES: [u64; 3] = [0, 20, 100];
        const SLOW: [u64; 3] = [0, 10, 50];
        self.weather = Weather {
            drop_per_mille: DROPS[self.rng.below(DROPS.len() as u64) as usize],
            duplicate_per_mille: DUPLICATES[self.rng.below(DUPLICATES.len() as u64) as usize],
            min_delay_ms: 1 + self.rng.below(5),
            jitter_ms: self.rng.below(40),
            slow_per_mille: SLOW[self.rng.below(SLOW.len() as u64) as usize],
        };
        let weather = self.weather;
        self.note(format!("network: {weather:?}"), None);
    }

    // --- the quiet phase ---

    pub(super) fn end_faults(&mut self) {
        self.faults_on = false;
        self.cut.clear();
        self.weather = Weather::calm();
        self.note(
            "faults end: network healed, everyone back".to_string(),
            None,
        );
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up() {
                self.restart(n);
            } else if self.nodes[n].paused_until_ms.is_some() {
                self.resume(n);
            }
            if self.failure.is_some() {
                return;
            }
            // No more crashes: a lying disk's promises do not matter any more.
            let mut disk = self.nodes[n].disk.borrow_mut();
            disk.crash_after_writes = None;
            disk.write_back();
        }
        self.schedule(CONVERGENCE_CHECK_MS, Event::CheckConverged);
    }
}
