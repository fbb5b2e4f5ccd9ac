//! One region's health state machine: active check results, passive ejections and
//! the clock in; phase, traffic weight and logged transitions out. Pure.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{FailbackSpec, PassiveSpec};

/// Where a region stands. Only `Up` serves; drains are kept elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Up,
    /// Failed `fall` checks in a row; back after `rise` passes.
    Down,
    /// Taken out by failures seen in real traffic, until the instant given.
    Ejected {
        until: Instant,
    },
    /// Flapping: passing its checks, but kept out until the instant given.
    HeldDown {
        until: Instant,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Up => "up",
            Phase::Down => "down",
            Phase::Ejected { .. } => "ejected",
            Phase::HeldDown { .. } => "held_down",
        }
    }
}

/// A change of phase and why; the caller logs and counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    pub cause: String,
}

/// What the machine needs to know besides events.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub rise: u32,
    pub fall: u32,
    pub passive: PassiveSpec,
    pub failback: FailbackSpec,
}

#[derive(Debug, Clone)]
pub struct Machine {
    phase: Phase,
    passes: u32,
    fails: u32,
    /// When the current run of failed checks began.
    first_fail: Option<Instant>,
    /// Ejections in a row without a calm period between them.
    ejections: u32,
    /// When the region last went out of service, within the flap window.
    outages: VecDeque<Instant>,
    /// When the region last came back into service (for slow start).
    up_since: Option<Instant>,
    last: Option<(Instant, Transition)>,
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine {
    /// A region starts up, at full weight: it is taken out by evidence, not by
    /// the absence of it.
    pub fn new() -> Self {
        Machine {
            phase: Phase::Up,
            passes: 0,
            fails: 0,
            first_fail: None,
            ejections: 0,
            outages: VecDeque::new(),
            up_since: None,
            last: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn serving(&self) -> bool {
        self.phase == Phase::Up
    }

    /// The last transition and when it happened.
    pub fn last_transition(&self) -> Option<&(Instant, Transition)> {
        self.last.as_ref()
    }

    /// The share of its traffic a serving region gets, in 0..=1000: ramps up
    /// linearly over the slow-start window after it comes back.
    pub fn weight(&self, now: Instant, slow_start: Duration) -> u16 {
        if !self.serving() {
            return 0;
        }
        match self.up_since {
            Some(since) if !slow_start.is_zero() => {
                let elapsed = now.saturating_duration_since(since);
                if elapsed >= slow_start {
                    1000
                } else {
                    // Never 0: a ramping region gets a trickle from the start.
                    ((elapsed.as_secs_f64() / slow_start.as_secs_f64() * 1000.0) as u16).max(10)
                }
            }
            _ => 1000,
        }
    }

    /// Starts the slow-start ramp again, as for a region back from an operator's
    /// drain: its caches are as cold as after an outage.
    pub fn begin_ramp(&mut self, now: Instant) {
        if self.serving() {
            self.up_since = Some(now);
        }
    }

    fn go(&mut self, now: Instant, to: Phase, cause: String) -> Transition {
        let from = self.phase;
        self.phase = to;
        if to == Phase::Up {
            self.up_since = Some(now);
        } else if from == Phase::Up {
            self.outages.push_back(now);
        }
        let t = Transition { from, to, cause };
        self.last = Some((now, t.clone()));
        t
    }

    fn flapping(&mut self, now: Instant, l: &Limits) -> bool {
        while let Some(&t) = self.outages.front() {
            if now.saturating_duration_since(t) > l.failback.flap_window {
                self.outages.pop_front();
            } else {
                break;
            }
        }
        self.outages.len() >= l.failback.flap_threshold as usize
    }

    /// The way back into service: straight up, or held down when flapping.
    fn recover(&mut self, now: Instant, l: &Limits, cause: String) -> Transition {
        if self.flapping(now, l) && !l.failback.hold_down.is_zero() {
            let n = self.outages.len();
            self.go(
                now,
                Phase::HeldDown {
                    until: now + l.failback.hold_down,
                },
                format!(
                    "{cause}, but held down for {}: out of service {n} times within {}",
                    humantime::format_duration(l.failback.hold_down),
                    humantime::format_duration(l.failback.flap_window)
                ),
            )
        } else {
            self.go(now, Phase::Up, cause)
        }
    }

    /// One active check's result (`Err` says what failed).
    pub fn check(
        &mut self,
        now: Instant,
        result: Result<(), &str>,
        l: &Limits,
    ) -> Option<Transition> {
        match result {
            Ok(()) => {
                self.fails = 0;
                self.first_fail = None;
                self.passes = self.passes.saturating_add(1);
                if self.phase == Phase::Down && self.passes >= l.rise {
                    let cause = format!("{} checks passed", self.passes);
                    return Some(self.recover(now, l, cause));
                }
                None
            }
            Err(why) => {
                self.passes = 0;
                self.fails = self.fails.saturating_add(1);
                let first = *self.first_fail.get_or_insert(now);
                if self.phase != Phase::Down && self.fails >= l.fall {
                    let since = now.saturating_duration_since(first);
                    return Some(self.go(
                        now,
                        Phase::Down,
                        format!(
                            "{} checks failed over {} (last: {why})",
                            self.fails,
                            humantime::format_duration(round_ms(since))
                        ),
                    ));
                }
                None
            }
        }
    }

    /// Real traffic failed `consecutive_failures` times in a row (`why` says how).
    pub fn passive_failure(&mut self, now: Instant, why: &str, l: &Limits) -> Option<Transition> {
        if self.phase != Phase::Up || l.passive.consecutive_failures == 0 {
            return None;
        }
        let factor = 1u32 << self.ejections.min(16);
        let period = l
            .passive
            .ejection
            .saturating_mul(factor)
            .min(l.passive.max_ejection);
        self.ejections = self.ejections.saturating_add(1);
        Some(self.go(
            now,
            Phase::Ejected {
                until: now + period,
            },
            format!(
                "ejected for {}: {} consecutive failures in traffic (last: {why})",
                humantime::format_duration(period),
                l.passive.consecutive_failures
            ),
        ))
    }

    /// Ends a hold-down or an ejection early (`why` says why): the router's
    /// own damping never keeps out a region that is all a jurisdiction has
    /// left. A region down by its checks stays down.
    pub fn waive(&mut self, now: Instant, why: String) -> Option<Transition> {
        match self.phase {
            Phase::HeldDown { .. } | Phase::Ejected { .. } => Some(self.go(now, Phase::Up, why)),
            _ => None,
        }
    }

    /// Time passing: ejections and hold-downs end; a calm region forgets its
    /// past ejections.
    pub fn tick(&mut self, now: Instant, l: &Limits) -> Option<Transition> {
        match self.phase {
            Phase::Ejected { until } if now >= until => {
                Some(self.recover(now, l, "ejection ended".to_owned()))
            }
            Phase::HeldDown { until } if now >= until => {
                Some(self.go(now, Phase::Up, "hold-down ended".to_owned()))
            }
            Phase::Up => {
                if let Some(since) = self.up_since {
                    if self.ejections > 0
                        && now.saturating_duration_since(since) >= l.passive.max_ejection
                    {
                        self.ejections = 0;
                    }
                }
                None
            }
            _ => None,
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            rise: 2,
            fall: 3,
            passive: PassiveSpec {
                consecutive_failures: 5,
                ejection: Duration::from_secs(10),
                max_ejection: Duration::from_secs(60),
                max_ejected_percent: 50,
                slow_factor_percent: 500,
                slow_min: Duration::from_millis(500),
                slow_min_requests: 20,
                count_all_5xx: false,
                min_distinct_clients: 1,
            },
            failback: FailbackSpec {
                slow_start: Duration::from_secs(30),
                flap_threshold: 3,
                flap_window: Duration::from_secs(300),
                hold_down: Duration::from_secs(120),
            },
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn one_lost_check_is_not_a_failover() {
        let l = limits();
        let mut m = Machine::new();
        let t = Instant::now();
        assert_eq!(m.check(t, Err("timeout"), &l), None);
        assert_eq!(m.check(t + 2 * S, Err("timeout"), &l), None);
        assert_eq!(m.check(t + 4 * S, Ok(()), &l), None);
        assert_eq!(m.check(t + 6 * S, Err("timeout"), &l), None);
        assert!(m.serving());
    }

    #[tokio::test(start_paused = true)]
    async fn fall_failed_checks_take_it_down_and_rise_passes_bring_it_back() {
        let l = limits();
        let mut m = Machine::new();
        let t = Instant::now();
        m.check(t, Err("503"), &l);
        m.check(t + 2 * S, Err("503"), &l);
        let down = m
            .check(t + 4 * S, Err("503"), &l)
            .expect("down on the third");
        assert_eq!((down.from, down.to), (Phase::Up, Phase::Down));
        assert!(
            down.cause.contains("3 checks failed over 4s"),
            "{}",
            down.cause
        );
        assert!(!m.serving());
        assert_eq!(m.check(t + 6 * S, Ok(()), &l), None);
        let up = m
            .check(t + 8 * S, Ok(()), &l)
            .expect("up on the second pass");
        assert_eq!(up.to, Phase::Up);
        assert!(m.serving());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_the_weight_over_the_window() {
        let l = limits();
        let mut m = Machine::new();
        let t = Instant::now();
        assert_eq!(
            m.weight(t, l.failback.slow_start),
            1000,
            "a fresh region is not ramped"
        );
        for i in 0..3 {
            m.check(t + i * S, Err("refused"), &l);
        }
        assert_eq!(m.weight(t + 3 * S, l.failback.slow_start), 0);
        m.check(t + 10 * S, Ok(()), &l);
        m.check(t + 11 * S, Ok(()), &l);
        let back = t + 11 * S;
        assert_eq!(
            m.weight(back, l.failback.slow_start),
            10,
            "a trickle at first"
        );
        assert_eq!(m.weight(back + 15 * S, l.failback.slow_start), 500);
        assert_eq!(m.weight(back + 30 * S, l.failback.slow_start), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn passive_ejections_back_off_and_are_capped() {
        let l = limits();
        let mut m = Machine::new();
        let mut now = Instant::now();
        let mut periods = Vec::new();
        for _ in 0..5 {
            let t = m
                .passive_failure(now, "connect refused", &l)
                .expect("ejected");
            let Phase::Ejected { until } = t.to else {
                panic!("{t:?}")
            };
            periods.push(until - now);
            assert_eq!(m.tick(until - Duration::from_millis(1), &l), None);
            m.tick(until, &l).expect("back after the ejection");
            // Flapping hold-downs are a separate guard; keep them out of this test.
            if let Phase::HeldDown { until } = m.phase() {
                m.tick(until, &l);
                now = until;
            } else {
                now = until;
            }
        }
        assert_eq!(periods, [10 * S, 20 * S, 40 * S, 60 * S, 60 * S]);
    }

    /// A region that fails and recovers over and over is held out after the
    /// third outage instead of being bounced back and forth.
    #[tokio::test(start_paused = true)]
    async fn a_flapping_region_is_held_down_and_routing_changes_are_bounded() {
        let l = limits();
        let mut m = Machine::new();
        let start = Instant::now();
        let mut routing_changes = 0;
        let mut serving = m.serving();
        // Ten minutes of checks every 2 s: three fail, two pass, repeat.
        for i in 0..300u32 {
            let now = start + 2 * S * i;
            m.tick(now, &l);
            let result = if i % 5 < 3 { Err("503") } else { Ok(()) };
            m.check(now, result, &l);
            if m.serving() != serving {
                serving = m.serving();
                routing_changes += 1;
            }
        }
        // Without hold-down: one change per 10 s cycle, 60 in all.
        assert!(
            routing_changes <= 12,
            "{routing_changes} routing changes in ten minutes"
        );
        assert!(
            matches!(m.last_transition(), Some((_, t)) if t.cause.contains("held down") || t.to != Phase::Up)
        );
    }
}
