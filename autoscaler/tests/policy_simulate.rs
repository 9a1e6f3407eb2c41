//! `shoal simulate`'s engine: trace parsing and the policy run against a trace.

use std::time::Duration;

use shoal_autoscaler::simulate::{simulate, SimulateError, Trace, TraceError};
use shoal_config::{Scale, ScaleMetric};

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

#[test]
fn trace_lines_header_comments_and_steps() {
    let trace = Trace::parse(
        "# load test\n\
         seconds, concurrency\n\
         \n\
         0,10\n\
         5, 40   # the step\n\
         5,50\n\
         10.5,0\n",
    )
    .unwrap();
    assert_eq!(trace.end(), Duration::from_millis(10_500));
    assert_eq!(trace.value_at(s(0)), 10.0);
    assert_eq!(trace.value_at(s(4)), 10.0);
    assert_eq!(
        trace.value_at(s(5)),
        50.0,
        "the later of two points at one time wins"
    );
    assert_eq!(trace.value_at(s(11)), 0.0);
    // A tick averages over time: (4,6] is half 10, half 50.
    assert_eq!(trace.mean(s(4), s(6)), 30.0);
    assert_eq!(
        trace.first_rise(),
        Some(s(5)),
        "the load at 0s is the baseline"
    );

    let late = Trace::parse("3,0\n10,20\n20,20\n").unwrap();
    assert_eq!(late.value_at(s(1)), 0.0, "no load before the first point");
    assert_eq!(late.first_rise(), Some(s(10)));
    assert_eq!(Trace::parse("0,5\n9,5\n").unwrap().first_rise(), None);
    assert_eq!(Trace::parse("2,5\n9,5\n").unwrap().first_rise(), Some(s(2)));
}

#[test]
fn trace_errors_name_the_line() {
    let err = |text: &str| Trace::parse(text).unwrap_err();
    assert_eq!(
        err("0,1\n# c\n5;2\n"),
        TraceError {
            line: 3,
            message: "expected 2 columns `seconds,value`, found 1".to_owned()
        }
    );
    assert_eq!(err("0,1\n2,x\n").line, 2);
    assert_eq!(
        err("0,1\n2,-1\n").to_string(),
        "line 2: `-1` is not a load: a finite number, 0 or more"
    );
    assert_eq!(
        err("seconds,value\nt,1\n").line,
        2,
        "only the first line may be a header"
    );
    assert_eq!(err("0,1\n-1,1\n").line, 2);
    assert!(err("0,1\n10,1\n5,1\n")
        .message
        .contains("comes before the previous point (10s)"));
    assert_eq!(err("0,1,2\n").line, 1);
    assert_eq!(err("# nothing\n").message, "no `seconds,value` lines");
    assert!(err("0,100\n").message.contains("ends at 0s"));
}

fn scale() -> Scale {
    Scale {
        min: 1,
        max: 10,
        initial: Some(1),
        target: 100.0,
        utilization: 0.7,
        window: s(20),
        panic_window: s(4),
        ..Scale::default()
    }
}

#[test]
fn a_step_trace_gives_a_timeline_and_a_summary() {
    // 50 in flight, then 300 from 10s to 40s, then 0 until 80s.
    let trace = Trace::parse("0,50\n10,300\n40,0\n80,0\n").unwrap();
    let sim = simulate(&scale(), &trace, s(2)).unwrap();

    let first = &sim.timeline[0];
    assert_eq!(
        (first.at, first.desired, first.ready, first.starting),
        (s(0), 1, 0, 1)
    );
    assert_eq!(first.reason.as_deref(), Some("initial 1 (scale.initial)"));
    assert!(sim.timeline.iter().any(|c| c.at == s(2) && c.ready == 1));

    // The step reaches the policy in the tick ending at 11s; the 4s panic window then
    // holds (3 × 50 + 300) / 4 = 112.5 → 2 ≥ 2.0 × 1 ready.
    let up = sim.timeline.iter().find(|c| c.desired > 1).unwrap();
    assert_eq!(up.at, s(11));
    assert!(up.panic);
    assert_eq!(
        up.reason.as_deref(),
        Some("panic, 2 ≥ 2.0 × 1 ready: 4s concurrency 112.5 / (target 100 × 0.7) → 2 (+1)")
    );
    // 300 / 70 → 5 replicas, ready 2s after they were asked for.
    assert_eq!(sim.summary.peak_replicas, 5);
    assert_eq!(sim.summary.peak_ready, 5);
    assert_eq!(sim.summary.time_to_first_scale_up, Some(s(1)));
    assert_eq!(sim.summary.first_load_step, Some(s(10)));
    // Back to min once the load is gone (min 1: never zero).
    let last = sim.timeline.last().unwrap();
    assert_eq!(last.desired, 1);
    assert!(sim.timeline.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(sim.summary.scale_ups >= 2);
    assert!(sim.summary.scale_downs >= 1);
    assert!(sim.summary.panic_seconds > 0.0);
    assert!(sim.summary.over_target_seconds > 0.0);
    assert_eq!(sim.summary.duration, s(80));
    // Every change of the count carries its reason; ready-only rows carry none.
    for change in &sim.timeline {
        assert_eq!(change.desired, change.ready + change.starting, "{change:?}");
    }
}

#[test]
fn a_trace_to_zero_and_back() {
    let scale = Scale {
        min: 0,
        initial: Some(0),
        zero_grace: s(10),
        ..scale()
    };
    let trace = Trace::parse("0,0\n5,20\n15,0\n40,20\n50,20\n").unwrap();
    let sim = simulate(&scale, &trace, s(1)).unwrap();
    let desired: Vec<(u64, u32)> = sim
        .timeline
        .iter()
        .filter(|c| c.reason.is_some())
        .map(|c| (c.at.as_secs(), c.desired))
        .collect();
    // Activated by the first tick with load, zero 10s after the last, activated again.
    assert_eq!(desired, [(0, 0), (6, 1), (25, 0), (41, 1)]);
    let activation = sim.timeline.iter().find(|c| c.at == s(6)).unwrap();
    assert_eq!(
        activation.reason.as_deref(),
        Some("activate: concurrency 20.0 waiting at 0 ready / (target 100 × 0.7) → 1 (+1)")
    );
    // At zero ready, any load is over target: the two cold starts.
    assert_eq!(sim.summary.over_target_seconds, 2.0);
    assert_eq!(sim.summary.first_load_step, Some(s(5)));
    assert_eq!(sim.summary.time_to_first_scale_up, Some(s(1)));
}

#[test]
fn cpu_services_saturate_at_100_percent_per_ready_replica() {
    let scale = Scale {
        metric: ScaleMetric::Cpu,
        target: 50.0,
        initial: Some(2),
        ..scale()
    };
    // A demand of 400% (four busy replicas): 2 ready replicas report 200%, ratio 2 → 4;
    // then the 4 report 400%, ratio 2 → 8, which covers it at 50% each.
    let trace = Trace::parse("0,400\n60,400\n").unwrap();
    let sim = simulate(&scale, &trace, s(1)).unwrap();
    let counts: Vec<u32> = sim
        .timeline
        .iter()
        .filter(|c| c.reason.is_some())
        .map(|c| c.desired)
        .collect();
    assert_eq!(counts, [2, 4, 8]);
}

#[test]
fn the_example_traces_parse_and_run() {
    for text in [
        include_str!("../../examples/traces/step.csv"),
        include_str!("../../examples/traces/spike.csv"),
    ] {
        let trace = Trace::parse(text).unwrap();
        let sim = simulate(&Scale::default(), &trace, s(1)).unwrap();
        assert!(sim.summary.scale_ups > 0);
    }
}

#[test]
fn refuses_endless_simulations() {
    let trace = Trace::parse("0,1\n100000000,1\n").unwrap();
    assert!(matches!(
        simulate(&scale(), &trace, s(1)),
        Err(SimulateError::TooLong { .. })
    ));
    let zero_tick = Scale {
        tick: Duration::ZERO,
        ..scale()
    };
    assert_eq!(
        simulate(&zero_tick, &trace, s(1)),
        Err(SimulateError::ZeroTick)
    );
}
