//! The scaling policy in simulated time: no sleeping, every tick is an `Observation` whose
//! `at` the test chooses. Unless a test says otherwise, replicas are ready as soon as they
//! are desired, so the ready count of a tick is the previous decision's `to`.

use std::time::Duration;

use shoal_autoscaler::policy::{Decision, Direction, Observation, Policy};
use shoal_config::{Scale, ScaleMetric};

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// Feeds one observation per second for `seconds` (a range of tick times), the load given by
/// `load(t)`, with every desired replica ready.
fn drive(
    policy: &mut Policy,
    seconds: std::ops::RangeInclusive<u64>,
    load: impl Fn(u64) -> f64,
) -> Vec<Decision> {
    seconds
        .map(|t| {
            let ready = policy.current();
            policy.observe(Observation {
                at: s(t),
                value: load(t),
                requests: load(t) > 0.0,
                ready,
                starting: 0,
            })
        })
        .collect()
}

fn at(decisions: &[Decision], t: u64) -> &Decision {
    decisions
        .iter()
        .find(|d| d.at == s(t))
        .unwrap_or_else(|| panic!("no decision at {t}s"))
}

/// A window of one tick: the stable desire follows the load at once, which isolates the
/// rate limits and the delay from the averaging.
fn one_tick_windows() -> Scale {
    Scale {
        window: s(1),
        panic_window: s(1),
        ..Scale::default()
    }
}

#[test]
fn initial_count_before_any_observation() {
    let policy = Policy::new(&Scale {
        initial: Some(3),
        ..Scale::default()
    });
    assert_eq!(policy.current(), 3);
    assert!(!policy.panicking());
}

#[test]
fn initial_holds_until_that_many_are_ready_at_once() {
    let mut policy = Policy::new(&Scale {
        initial: Some(3),
        ..Scale::default()
    });
    let idle = |t, ready| Observation {
        at: s(t),
        value: 0.0,
        requests: false,
        ready,
        starting: 3 - ready,
    };
    // No load, but only 1 and then 2 of the 3 started are ready: the count stays at 3.
    for (t, ready) in [(1, 1), (2, 2)] {
        let decision = policy.observe(idle(t, ready));
        assert_eq!(decision.to, 3, "{}", decision.reason);
        assert!(
            decision.reason.contains(&format!(
                "holding initial 3 until as many are ready ({ready} so far)"
            )),
            "{}",
            decision.reason
        );
    }
    // All 3 ready once: from then on the windows decide (÷2 at most per decision, min 1).
    assert_eq!(policy.observe(idle(3, 3)).to, 1);
    assert_eq!(policy.observe(idle(4, 1)).to, 1);

    // Replicas that never all come up hold it for one stable window at most (60 s here).
    let mut stuck = Policy::new(&Scale {
        initial: Some(3),
        min: 0,
        zero_grace: s(1),
        ..Scale::default()
    });
    assert_eq!(stuck.observe(idle(1, 1)).to, 3);
    assert_eq!(stuck.observe(idle(60, 1)).to, 3);
    assert!(stuck.observe(idle(61, 1)).to < 3);
}

#[test]
fn step_load_scales_up_as_the_stable_window_fills() {
    // 100 in flight on 2 replicas (target 70 each), then a step to 200: three replicas'
    // worth, under the panic threshold, so the stable window decides.
    let mut policy = Policy::new(&Scale {
        initial: Some(2),
        ..Scale::default()
    });
    let step = 100;
    let decisions = drive(
        &mut policy,
        1..=300,
        |t| if t > step { 200.0 } else { 100.0 },
    );

    assert!(decisions.iter().all(|d| !d.panic));
    assert!(decisions.iter().take(step as usize).all(|d| d.to == 2));
    // The 60s average passes 140 (2 × 70) after 25 ticks of 200: 100 + 100 × 25 / 60.
    assert_eq!(at(&decisions, step + 24).to, 2);
    let up = at(&decisions, step + 25);
    assert_eq!((up.from, up.to), (2, 3));
    assert_eq!(up.direction(), Some(Direction::Up));
    assert_eq!(
        up.reason,
        "stable concurrency 141.7 over 60s / (target 100 × 0.7) → 3 (+1)"
    );
    assert_eq!(up.inputs.stable.map(|v| (v * 10.0).round()), Some(1417.0));
    assert!(decisions[step as usize + 25..].iter().all(|d| d.to == 3));
}

#[test]
fn a_spike_enters_panic_scales_up_fast_and_leaves_panic_a_window_later() {
    let mut policy = Policy::new(&Scale {
        initial: Some(2),
        ..Scale::default()
    });
    let spike = 101..=110;
    let decisions = drive(&mut policy, 1..=400, |t| {
        if spike.contains(&t) {
            600.0
        } else {
            100.0
        }
    });

    // At 102 the 6s average is (4 × 100 + 2 × 600) / 6 = 266.7 → 4 ≥ 2.0 × 2 ready.
    assert!(!at(&decisions, 101).panic);
    let enter = at(&decisions, 102);
    assert!(enter.panic);
    assert_eq!(
        enter.reason,
        "panic, 4 ≥ 2.0 × 2 ready: 6s concurrency 266.7 / (target 100 × 0.7) → 4 (+2)"
    );
    // The panic window fills: 600 / 70 → 9 replicas within the spike.
    assert_eq!(at(&decisions, 106).to, 9);

    // In panic the count never goes down, though the load fell back at 111.
    let panicking: Vec<&Decision> = decisions.iter().filter(|d| d.panic).collect();
    assert!(panicking.windows(2).all(|w| w[1].to >= w[0].to));
    assert!(panicking.iter().all(|d| d.to <= 9));
    let held = at(&decisions, 130);
    assert!(held.panic);
    assert_eq!(held.to, 9);
    assert!(
        held.reason.starts_with("in panic for 28s: "),
        "how long since 102: {}",
        held.reason
    );

    // The last tick at or over the threshold was 102 (from 103 on, 9 ≥ 2 × ready fails);
    // panic ends a whole stable window later.
    assert!(at(&decisions, 161).panic);
    let leave = at(&decisions, 162);
    assert!(!leave.panic);
    assert!(leave.to < 9, "{leave:?}");
    assert!(leave.to >= 9 / 2, "at most ÷2 per decision: {leave:?}");
    assert_eq!(decisions.last().map(|d| d.to), Some(2));
}

#[test]
fn a_noisy_load_does_not_make_the_count_oscillate() {
    // 175 in flight is 2.5 replicas' worth; ±30% noise around it, after a window of calm.
    let mut policy = Policy::new(&Scale {
        initial: Some(3),
        ..Scale::default()
    });
    let mut seed: u64 = 0x5eed;
    let mut noise = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
    };
    let loads: Vec<f64> = (0..=1200)
        .map(|t| {
            if t <= 60 {
                175.0
            } else {
                175.0 * (1.0 + 0.3 * noise())
            }
        })
        .collect();
    let decisions = drive(&mut policy, 1..=1200, |t| loads[t as usize]);
    assert!(decisions.iter().all(|d| d.to == 3 && !d.panic));
    assert!(decisions.iter().all(|d| d.direction().is_none()));
}

#[test]
fn scale_down_is_limited_per_decision() {
    let mut policy = Policy::new(&Scale {
        initial: Some(10),
        ..one_tick_windows()
    });
    let decisions = drive(&mut policy, 1..=10, |t| if t <= 5 { 700.0 } else { 70.0 });
    assert_eq!(at(&decisions, 5).to, 10);
    let first = at(&decisions, 6);
    assert_eq!((first.from, first.to), (10, 5));
    assert_eq!(
        first.reason,
        "stable concurrency 70.0 over 1s / (target 100 × 0.7) = 1, at most ÷2 of 10 ready → 5 (-5)"
    );
    assert_eq!(at(&decisions, 7).to, 2);
    assert_eq!(at(&decisions, 8).to, 1);
}

#[test]
fn scale_up_is_limited_per_decision_but_not_from_zero_ready() {
    let mut policy = Policy::new(&Scale {
        scale_up_rate: 2.0,
        ..one_tick_windows()
    });
    let decisions = drive(&mut policy, 1..=5, |_| 700.0);
    let counts: Vec<u32> = decisions.iter().map(|d| d.to).collect();
    assert_eq!(counts, [2, 4, 8, 10, 10]);
    assert!(decisions[0].reason.contains("at most ×2 of 1 ready"));

    // Nothing ready (all starting): no cap.
    let mut policy = Policy::new(&Scale {
        scale_up_rate: 2.0,
        ..one_tick_windows()
    });
    let decision = policy.observe(Observation {
        at: s(1),
        value: 700.0,
        requests: true,
        ready: 0,
        starting: 1,
    });
    assert_eq!(decision.to, 10);
}

#[test]
fn scale_down_delay_holds_the_highest_count_over_the_delay() {
    let mut policy = Policy::new(&Scale {
        initial: Some(10),
        scale_down_delay: s(5),
        ..one_tick_windows()
    });
    let decisions = drive(&mut policy, 1..=30, |t| if t <= 5 { 700.0 } else { 70.0 });
    let held = at(&decisions, 6);
    assert_eq!(held.to, 10);
    assert_eq!(
        held.reason,
        "stable concurrency 70.0 over 1s / (target 100 × 0.7) = 1, at most ÷2 of 10 ready, \
         scale_down_delay 5s holds 10 → 10 (no change)"
    );
    assert!((6..=9).all(|t| at(&decisions, t).to == 10));
    // 5 was first wanted at 6s; from 10s the 10 wanted at 5s has left the delay.
    assert_eq!(at(&decisions, 10).to, 5);
    assert_eq!(decisions.last().map(|d| d.to), Some(1));

    // A dip shorter than the delay removes nothing.
    let mut policy = Policy::new(&Scale {
        initial: Some(10),
        scale_down_delay: s(5),
        ..one_tick_windows()
    });
    let decisions = drive(&mut policy, 1..=20, |t| {
        if (8..=11).contains(&t) {
            70.0
        } else {
            700.0
        }
    });
    assert!(decisions.iter().all(|d| d.to == 10));
}

#[test]
fn zero_only_after_zero_grace_without_traffic() {
    let scale = Scale {
        min: 0,
        initial: Some(1),
        zero_grace: s(30),
        ..Scale::default()
    };
    let mut policy = Policy::new(&scale);
    // Traffic until 10s, then none: idle from 10s, zero at 40s.
    let decisions = drive(&mut policy, 1..=60, |t| if t <= 10 { 50.0 } else { 0.0 });
    assert!(
        decisions.iter().take(39).all(|d| d.to == 1),
        "{decisions:#?}"
    );
    let zero = at(&decisions, 40);
    assert_eq!((zero.from, zero.to), (1, 0));
    assert_eq!(zero.reason, "idle for 30s (zero_grace) → 0 (-1)");
    let stays = at(&decisions, 60);
    assert_eq!(stays.to, 0);
    assert_eq!(stays.reason, "no traffic at 0 replicas → 0 (no change)");

    // Any traffic at zero activates at once, sized on the waiting load, not on the window.
    let back = policy.observe(Observation {
        at: s(61),
        value: 150.0,
        requests: true,
        ready: 0,
        starting: 0,
    });
    assert_eq!((back.from, back.to), (0, 3));
    assert_eq!(
        back.reason,
        "activate: concurrency 150.0 waiting at 0 ready / (target 100 × 0.7) → 3 (+3)"
    );

    // Activation respects max.
    let mut capped = Policy::new(&Scale {
        max: 2,
        initial: Some(0),
        ..scale.clone()
    });
    let woken = capped.observe(Observation {
        at: s(1),
        value: 500.0,
        requests: true,
        ready: 0,
        starting: 0,
    });
    assert_eq!(
        woken.reason,
        "activate: concurrency 500.0 waiting at 0 ready / (target 100 × 0.7) = 8, max 2 → 2 (+2)"
    );

    // With min 1 the count never reaches zero.
    let mut policy = Policy::new(&Scale {
        min: 1,
        ..scale.clone()
    });
    let decisions = drive(&mut policy, 1..=120, |_| 0.0);
    assert!(decisions.iter().all(|d| d.to == 1));

    // Traffic inside the grace restarts it.
    let mut policy = Policy::new(&scale);
    let decisions = drive(&mut policy, 1..=80, |t| if t == 25 { 1.0 } else { 0.0 });
    assert_eq!(at(&decisions, 54).to, 1);
    assert_eq!(at(&decisions, 55).to, 0);
}

#[test]
fn going_to_zero_keeps_to_scale_down_rate() {
    // The window (10 s) still wants 2 when the grace (5 s) is up: zero comes in two steps,
    // at most ÷2 each.
    let scale = Scale {
        min: 0,
        initial: Some(1),
        zero_grace: s(5),
        window: s(10),
        panic_window: s(2),
        ..Scale::default()
    };
    let mut policy = Policy::new(&scale);
    let decisions = drive(&mut policy, 1..=30, |t| if t <= 15 { 200.0 } else { 0.0 });
    let before = at(&decisions, 15).to;
    assert_eq!(before, 3, "{decisions:#?}");
    let first = decisions
        .iter()
        .find(|d| d.reason.starts_with("idle for"))
        .expect("a zero_grace decision");
    assert_eq!((first.from, first.to), (2, 1), "{first:#?}");
    assert_eq!(
        first.reason,
        "idle for 5s (zero_grace) = 0, at most ÷2 of 2 ready → 1 (-1)"
    );
    let zero = decisions.iter().find(|d| d.to == 0).expect("zero reached");
    assert_eq!(zero.from, 1, "{zero:#?}");
}

#[test]
fn zero_waits_for_scale_down_delay_too() {
    let mut policy = Policy::new(&Scale {
        min: 0,
        zero_grace: s(10),
        scale_down_delay: s(20),
        ..Scale::default()
    });
    let decisions = drive(&mut policy, 1..=30, |_| 0.0);
    assert_eq!(at(&decisions, 19).to, 1);
    let zero = at(&decisions, 20);
    assert_eq!(zero.to, 0);
    assert_eq!(
        zero.reason,
        "idle for 20s (zero_grace, scale_down_delay) → 0 (-1)"
    );
    // With a long stable window, still asking for the replica after the traffic, the delay
    // holds it as it holds any count asked for within it (Knative's window + delay).
    let mut policy = Policy::new(&Scale {
        min: 0,
        zero_grace: s(5),
        scale_down_delay: s(5),
        window: s(60),
        ..Scale::default()
    });
    let decisions = drive(&mut policy, 1..=30, |t| if t <= 10 { 50.0 } else { 0.0 });
    let zero = decisions.iter().find(|d| d.to == 0).expect("zero reached");
    assert_eq!(zero.at, s(19), "{zero:#?}");
    // Until then the delay holds the replica the windows asked for within it.
    let held = at(&decisions, 18);
    assert_eq!(
        held.reason,
        "idle for 8s (zero_grace) = 0, scale_down_delay 5s holds 1 → 1 (no change)"
    );
}

/// With `min: 0` the steps towards zero are held by `scale_down_delay` as a `min: 1`
/// service's steps are: the delay holds the highest count over it, whatever rule asked for
/// the lower one (Knative's delay window holds every desired count).
#[test]
fn steps_to_zero_are_held_by_scale_down_delay() {
    let scale = |min| Scale {
        min,
        initial: Some(8),
        zero_grace: s(2),
        scale_down_delay: s(5),
        ..one_tick_windows()
    };
    let load = |t| if t <= 5 { 560.0 } else { 0.0 };
    let to_zero = drive(&mut Policy::new(&scale(0)), 1..=60, load);
    let to_one = drive(&mut Policy::new(&scale(1)), 1..=60, load);
    // Each count stands for at least the delay, both ways: 8 → 4 → 2 → 1 (→ 0).
    for decisions in [&to_zero, &to_one] {
        let changes: Vec<&Decision> = decisions.iter().filter(|d| d.to != d.from).collect();
        for pair in changes.windows(2) {
            assert!(
                pair[1].at - pair[0].at >= s(5),
                "{} → {} at {:?}, then → {} at {:?}",
                pair[0].from,
                pair[0].to,
                pair[0].at,
                pair[1].to,
                pair[1].at
            );
        }
    }
    assert_eq!(at(&to_zero, 10).to, 4);
    assert_eq!(to_zero.last().map(|d| d.to), Some(0));
    assert_eq!(to_one.last().map(|d| d.to), Some(1));
    // The step to zero says what held the ones before it.
    let held = at(&to_zero, 12);
    assert_eq!(
        held.reason,
        "idle for 7s (zero_grace, scale_down_delay) = 0, at most ÷2 of 4 ready, \
         scale_down_delay 5s holds 4 → 4 (no change)"
    );
}

#[test]
fn activator_wakes_the_policy_between_ticks() {
    let mut policy = Policy::new(&Scale {
        min: 0,
        initial: Some(0),
        ..Scale::default()
    });
    let idle = policy.observe(Observation {
        at: s(1),
        value: 0.0,
        requests: false,
        ready: 0,
        starting: 0,
    });
    assert_eq!(idle.to, 0);
    let woken = policy.activate(Duration::from_millis(1500), 12, 0);
    assert_eq!((woken.from, woken.to), (0, 1));
    assert_eq!(
        woken.reason,
        "activate: 12 requests waiting at 0 replicas / (target 100 × 0.7) → 1 (+1)"
    );
    // More requests while it starts: the replicas they need start now, not at the tick.
    let again = policy.activate(Duration::from_millis(1600), 500, 0);
    assert_eq!((again.from, again.to), (1, 8));
    assert_eq!(
        again.reason,
        "activate: 500 requests waiting, 1 replica on the way / (target 100 × 0.7) → 8 (+7)"
    );
    // As many as they need are on their way: nothing changes.
    let enough = policy.activate(Duration::from_millis(1700), 520, 0);
    assert_eq!(enough.to, 8);
    assert_eq!(enough.direction(), None);
}

/// A service at zero (target 10, a 10 s window and a 2 s panic window) after `ticks` idle
/// one-second ticks.
fn idle_at_zero(ticks: u64) -> Policy {
    let mut policy = Policy::new(&Scale {
        min: 0,
        initial: Some(0),
        max: 8,
        target: 10.0,
        utilization: 1.0,
        window: s(10),
        panic_window: s(2),
        ..Scale::default()
    });
    for t in 1..=ticks {
        assert_eq!(tick(&mut policy, t, 0.0, 0).to, 0);
    }
    policy
}

/// The decision at tick `t` (in seconds) on `value`, with `ready` replicas and none starting.
fn tick(policy: &mut Policy, t: u64, value: f64, ready: u32) -> Decision {
    policy.observe(Observation {
        at: s(t),
        value,
        requests: value > 0.0,
        ready,
        starting: 0,
    })
}

#[test]
fn replicas_started_by_the_activator_are_kept_while_the_load_lasts() {
    let mut policy = idle_at_zero(10);
    // 50 requests arrive between ticks: 5 replicas, in panic, as at the next tick.
    let woken = policy.activate(Duration::from_millis(10_300), 50, 0);
    assert_eq!((woken.to, woken.panic), (5, true), "{woken:#?}");
    // They are ready at the next tick, with the load still there: the stable window's idle
    // samples from before must not scale them down again.
    let next = tick(&mut policy, 11, 40.0, 5);
    assert_eq!(next.to, 5, "{next:#?}");
}

#[test]
fn activation_at_a_tick_keeps_its_replicas_while_the_load_lasts() {
    let mut policy = idle_at_zero(9);
    // `shoal simulate`'s way: the load is first seen at a tick, with nothing ready.
    let woken = tick(&mut policy, 10, 17.5, 0);
    assert_eq!((woken.to, woken.panic), (2, true), "{woken:#?}");
    let next = tick(&mut policy, 11, 25.0, 2);
    assert!(next.to >= 2, "{next:#?}");
}

#[test]
fn all_replicas_starting_can_still_panic() {
    let mut policy = Policy::new(&Scale::default());
    let decision = policy.observe(Observation {
        at: s(1),
        value: 300.0,
        requests: true,
        ready: 0,
        starting: 1,
    });
    assert!(decision.panic);
    assert_eq!(decision.to, 5);
}

fn cpu(target: f64) -> Scale {
    Scale {
        metric: ScaleMetric::Cpu,
        target,
        tolerance: 0.1,
        initial: Some(3),
        ..Scale::default()
    }
}

fn cpu_tick(policy: &mut Policy, t: u64, value: f64, ready: u32, starting: u32) -> Decision {
    policy.observe(Observation {
        at: s(t),
        value,
        requests: value > 0.0,
        ready,
        starting,
    })
}

#[test]
fn a_cpu_service_goes_to_zero_without_requests_whatever_its_own_use() {
    let mut policy = Policy::new(&Scale {
        min: 0,
        initial: Some(1),
        zero_grace: s(5),
        ..cpu(50.0)
    });
    // The replica's own CPU (health checks): 0.1%, which the HPA rule rounds up to 1.
    let observe = |policy: &mut Policy, t, requests| {
        policy.observe(Observation {
            at: s(t),
            value: 0.1,
            requests,
            ready: 1,
            starting: 0,
        })
    };
    // Requests until 3 s keep it; without them it goes after zero_grace, at 8 s.
    for t in 1..=3 {
        assert_eq!(observe(&mut policy, t, true).to, 1);
    }
    for t in 4..=7 {
        assert_eq!(observe(&mut policy, t, false).to, 1, "at {t}s");
    }
    let zero = observe(&mut policy, 8, false);
    assert_eq!((zero.from, zero.to), (1, 0), "{}", zero.reason);
    assert_eq!(zero.reason, "idle for 5s (zero_grace) → 0 (-1)");
}

#[test]
fn hpa_holds_within_tolerance_and_scales_outside_it() {
    let mut policy = Policy::new(&cpu(70.0));
    // 3 × 75% = 225: ratio 1.07, within 0.1.
    let within = cpu_tick(&mut policy, 1, 225.0, 3, 0);
    assert_eq!(within.to, 3);
    assert_eq!(
        within.reason,
        "cpu 75.0% per ready replica (3 ready) / target 70% = ratio 1.07 within tolerance 0.1, \
         holding → 3 (no change)"
    );
    assert!(!within.panic);
    // 3 × 80% = 240: ratio 1.14 → ceil(1.14 × 3) = 4.
    let up = cpu_tick(&mut policy, 2, 240.0, 3, 0);
    assert_eq!((up.from, up.to), (3, 4));
    assert_eq!(up.inputs.ratio.map(|r| (r * 100.0).round()), Some(114.0));
    // 4 × 65% = 260: ratio 0.93, within.
    assert_eq!(cpu_tick(&mut policy, 3, 260.0, 4, 0).to, 4);
    // Exactly at the edge, 1.1 and 0.9, is within too (1.1 - 1 is a bit over 0.1 in f64).
    let mut policy = Policy::new(&cpu(50.0));
    for (t, value) in [(1, 165.0), (2, 135.0)] {
        let edge = cpu_tick(&mut policy, t, value, 3, 0);
        assert_eq!(edge.to, 3, "{}", edge.reason);
    }
}

#[test]
fn hpa_scale_down_takes_the_highest_recommendation_over_the_window() {
    let mut policy = Policy::new(&cpu(50.0));
    // 3 × 100% → 6.
    assert_eq!(cpu_tick(&mut policy, 1, 300.0, 3, 0).to, 6);
    // Then 6 × 25%: ratio 0.5 → 3, but 6 was recommended within the last 60s.
    for t in 2..=60 {
        let held = cpu_tick(&mut policy, t, 150.0, 6, 0);
        assert_eq!(held.to, 6, "{held:?}");
        assert!(
            held.reason.contains("highest over the last 60s is 6"),
            "{held:?}"
        );
    }
    let down = cpu_tick(&mut policy, 61, 150.0, 6, 0);
    assert_eq!((down.from, down.to), (6, 3));
}

#[test]
fn hpa_counts_starting_replicas_as_idle_and_ignores_their_cpu() {
    let mut policy = Policy::new(&Scale {
        initial: Some(4),
        ..cpu(70.0)
    });
    // 2 ready at 100%: ratio 1.43, but with the 2 starting ones at 0% it is 0.71 — the
    // replicas on their way are enough.
    let held = cpu_tick(&mut policy, 1, 200.0, 2, 2);
    assert_eq!(held.to, 4);
    assert!(
        held.reason
            .contains("0.71 counting 2 starting at 0%, holding"),
        "{held:?}"
    );
    // 2 ready at 100% and 1 starting: 200 / 3 / 70 = 0.95, still enough.
    let mut policy = Policy::new(&cpu(70.0));
    assert_eq!(cpu_tick(&mut policy, 1, 200.0, 2, 1).to, 3);
    // 2 ready at 100% and nothing starting: ceil(200 / 70) = 3.
    let mut policy = Policy::new(&Scale {
        initial: Some(2),
        ..cpu(70.0)
    });
    assert_eq!(cpu_tick(&mut policy, 1, 200.0, 2, 0).to, 3);
    // Nothing ready: no CPU to judge by.
    let mut policy = Policy::new(&cpu(70.0));
    let blind = cpu_tick(&mut policy, 1, 0.0, 0, 3);
    assert_eq!(blind.to, 3);
    assert_eq!(blind.inputs.ratio, None);
    assert_eq!(
        blind.reason,
        "cpu: no ready replica to measure, holding → 3 (no change)"
    );
}

#[test]
fn hpa_does_not_scale_down_while_over_target_with_replicas_missing() {
    // Desired 5, but only 2 ready (3 crashed) at 100%: over target, so no scale-down to 3.
    let mut policy = Policy::new(&Scale {
        initial: Some(5),
        ..cpu(70.0)
    });
    assert_eq!(cpu_tick(&mut policy, 1, 200.0, 2, 0).to, 5);
}

#[test]
fn bounds_and_bad_values() {
    let mut policy = Policy::new(&Scale {
        max: 4,
        ..one_tick_windows()
    });
    let capped = policy.observe(Observation {
        at: s(1),
        value: 7000.0,
        requests: true,
        ready: 1,
        starting: 0,
    });
    assert_eq!(capped.to, 4);
    assert!(
        capped.reason.ends_with("= 100, max 4 → 4 (+3)"),
        "{capped:?}"
    );
    let nan = policy.observe(Observation {
        at: s(2),
        value: f64::NAN,
        requests: false,
        ready: 4,
        starting: 0,
    });
    assert_eq!(nan.inputs.observed, 0.0);
    assert_eq!(nan.to, 2);
}

/// A panic that outlasts `zero_grace` holds the count; when it ends, the delay still holds
/// the panic's count for its length, as it holds any count asked for within it.
#[test]
fn a_panics_count_is_held_by_the_delay_on_the_way_to_zero() {
    let mut policy = Policy::new(&Scale {
        min: 0,
        zero_grace: s(2),
        scale_down_delay: s(3),
        window: s(10),
        panic_window: s(1),
        ..Scale::default()
    });
    let decisions = drive(&mut policy, 1..=30, |t| if t <= 3 { 500.0 } else { 0.0 });
    assert!(at(&decisions, 10).panic);
    let after = at(&decisions, 11);
    assert!(!after.panic);
    assert_eq!((after.from, after.to), (8, 8), "{after:#?}");
    assert!(
        after.reason.contains("scale_down_delay 3s holds 8"),
        "{after:#?}"
    );
    assert_eq!(decisions.last().map(|d| d.to), Some(0));
}

/// The idle rule's steps go through the delay as the windows' do: a step the windows took
/// a tick before is not undercut, and the count goes 4 → 3 → 2 → 1 → 0 as a `min: 1`
/// service's would to 1.
#[test]
fn the_idle_rule_goes_through_the_delay_as_the_windows_do() {
    let mut policy = Policy::new(&Scale {
        min: 0,
        max: 4,
        initial: Some(0),
        target: 2.0,
        utilization: 1.0,
        window: s(6),
        panic_window: s(2),
        zero_grace: s(2),
        scale_down_delay: s(5),
        ..Scale::default()
    });
    let load = |t| {
        if t <= 20 {
            8.0
        } else if t <= 22 {
            0.5
        } else {
            0.0
        }
    };
    let decisions = drive(&mut policy, 1..=45, load);
    assert_eq!(at(&decisions, 26).to, 3);
    let idle = at(&decisions, 27);
    assert_eq!(idle.to, 3, "{idle:#?}");
    assert!(
        idle.reason.contains("scale_down_delay 5s holds 3"),
        "{idle:#?}"
    );
    let steps: Vec<(u64, u32)> = decisions
        .iter()
        .filter(|d| d.to != d.from && d.at >= s(26))
        .map(|d| (d.at.as_secs(), d.to))
        .collect();
    assert_eq!(steps, [(26, 3), (28, 2), (31, 1), (36, 0)]);
}

/// Panic is for a burst: with no request at all over a tick, the panic window's earlier
/// load does not start one. Otherwise the idle rule's steps down, which leave fewer ready
/// replicas than that load asked for, would read as a burst and start replicas again with
/// no traffic (an outside audit: 4 → 2 → 1, then "panic … → 3" before going to 0).
#[test]
fn a_service_without_requests_does_not_enter_panic() {
    let mut policy = Policy::new(&Scale {
        min: 0,
        max: 4,
        initial: Some(4),
        target: 2.0,
        window: s(6),
        panic_window: s(6),
        zero_grace: s(2),
        ..Scale::default()
    });
    let decisions = drive(&mut policy, 1..=30, |t| if t <= 10 { 5.0 } else { 0.0 });
    assert_eq!(at(&decisions, 10).to, 4, "{decisions:#?}");
    for pair in decisions.windows(2).filter(|pair| pair[1].at > s(10)) {
        assert!(pair[1].to <= pair[1].from, "{:#?}", pair[1]);
        assert!(pair[0].panic || !pair[1].panic, "{:#?}", pair[1]);
    }
    assert_eq!(decisions.last().map(|d| d.to), Some(0));
}

/// A pin replaces what the delay held: pinned at 6 and then at 1, an idle service handed
/// back to the policy stays at 1. The delay held the counts worked out from the pinned 6
/// (6 ÷ 2 = 3), which raised it to 3 with no traffic.
#[test]
fn a_released_pin_is_not_raised_by_what_the_delay_held() {
    let mut policy = Policy::new(&Scale {
        min: 1,
        max: 10,
        scale_down_delay: s(10),
        ..Scale::default()
    });
    let idle = |t, ready| Observation {
        at: s(t),
        value: 0.0,
        requests: false,
        ready,
        starting: 0,
    };
    // As the reconciler does while a pin lasts: observe, then put the count back.
    for (t, pinned) in [(1, 6), (2, 6), (3, 6), (4, 1), (5, 1)] {
        let _pinned_over = policy.observe(idle(t, pinned));
        policy.set_current(pinned);
    }
    // Handed back with `auto`, from the count the pin left.
    policy.set_current(1);
    for t in 6..=20 {
        let decision = policy.observe(idle(t, policy.current()));
        assert_eq!(decision.to, 1, "{decision:#?}");
    }
}
