use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use super::*;

/// A clock that moves only when slept on, and keeps every wait.
#[derive(Default)]
struct ManualClock {
    now: Mutex<Duration>,
    waits: Mutex<Vec<Duration>>,
}

impl ManualClock {
    fn advance(&self, d: Duration) {
        *self.now.lock().unwrap() += d;
    }

    fn waits(&self) -> Vec<Duration> {
        self.waits.lock().unwrap().clone()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self.now.lock().unwrap()
    }

    fn sleep_blocking(&self, d: Duration) {
        self.waits.lock().unwrap().push(d);
        self.advance(d);
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        self.sleep_blocking(d);
        std::future::ready(())
    }
}

/// Jitter that always draws the top of the range: the waits are the ceilings.
struct Top;

impl Jitter for Top {
    fn uniform(&mut self, upper: Duration) -> Duration {
        upper
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn policy(attempts: u32, backoff: u64, max_wait: u64, deadline: u64) -> RetryPolicy {
    RetryPolicy {
        attempts: NonZeroU32::new(attempts).unwrap(),
        backoff: Millis(ms(backoff)),
        multiplier: 2.0,
        max_wait: Millis(ms(max_wait)),
        deadline: Millis(ms(deadline)),
    }
}

fn always_transient(_: &String) -> Transience {
    Transience::Transient
}

#[test]
fn the_ceilings_grow_by_the_multiplier_up_to_the_cap() {
    let p = policy(10, 100, 1000, 60_000);
    let got: Vec<_> = (0..7).map(|n| p.ceiling(n)).collect();
    assert_eq!(
        got,
        [
            ms(100),
            ms(200),
            ms(400),
            ms(800),
            ms(1000),
            ms(1000),
            ms(1000)
        ]
    );
    let p = RetryPolicy {
        multiplier: 1.5,
        ..policy(10, 100, 10_000, 60_000)
    };
    assert_eq!(p.ceiling(2), ms(225));
    // A huge exponent saturates at the cap instead of overflowing.
    assert_eq!(p.ceiling(u32::MAX), ms(10_000));
}

#[test]
fn full_jitter_draws_within_zero_and_the_ceiling() {
    let p = policy(1000, 100, 800, 3_600_000);
    let mut s = p.schedule(SplitMix::seeded(7), Duration::ZERO);
    let mut seen_low = false;
    let mut seen_high = false;
    for n in 0..999u32 {
        let ceiling = p.ceiling(n);
        let w = s.next_wait(Duration::ZERO).unwrap();
        assert!(w <= ceiling, "wait {w:?} above its ceiling {ceiling:?}");
        seen_low |= w < ceiling / 4;
        seen_high |= w > ceiling * 3 / 4;
    }
    // Full jitter spreads over the whole range, not only near the ceiling.
    assert!(seen_low && seen_high);
    assert_eq!(s.next_wait(Duration::ZERO), Err(Stop::AttemptsSpent));
    // The draws are uniform: the mean of many draws under 1 s is near 500 ms.
    let mut j = SplitMix::seeded(11);
    let total: Duration = (0..10_000).map(|_| j.uniform(ms(1000))).sum();
    let mean = total / 10_000;
    assert!(mean > ms(480) && mean < ms(520), "{mean:?}");
    assert_eq!(j.uniform(Duration::ZERO), Duration::ZERO);
}

#[test]
fn the_blocking_loop_waits_the_schedule_then_returns_the_last_failure() {
    let clock = ManualClock::default();
    let p = policy(5, 100, 300, 60_000);
    let mut calls = Vec::new();
    let r: Result<(), _> = p.run_blocking_on(&clock, Top, "svc", &always_transient, |a| {
        calls.push(a.get());
        Err(format!("failure {a}"))
    });
    let e = r.unwrap_err();
    assert_eq!(calls, [1, 2, 3, 4, 5]);
    // Four waits between five calls, each the capped ceiling.
    assert_eq!(clock.waits(), [ms(100), ms(200), ms(300), ms(300)]);
    assert_eq!(e.error, "failure 5");
    assert_eq!(e.attempts.get(), 5);
    assert_eq!(e.stop, Stop::AttemptsSpent);
    assert!(e.transient());
    assert_eq!(e.to_string(), "failure 5 (after 5 attempts)");
}

#[test]
fn the_deadline_stops_before_a_wait_that_would_pass_it() {
    let clock = ManualClock::default();
    // Ceilings 100, 200, 400, 800: the waits end at 100, 300, 700; the next
    // would end at 1500, past the 1 s deadline.
    let p = policy(10, 100, 10_000, 1000);
    let mut calls = 0;
    let e = p
        .run_blocking_on(&clock, Top, "svc", &always_transient, |_| {
            calls += 1;
            Err::<(), _>("down".to_owned())
        })
        .unwrap_err();
    assert_eq!(calls, 4);
    assert_eq!(clock.waits(), [ms(100), ms(200), ms(400)]);
    assert_eq!(e.stop, Stop::Deadline);
    assert_eq!(e.attempts.get(), 4);
    assert!(e.to_string().starts_with("down (after 4 attempts; "), "{e}");
    // Time spent in the calls counts too: calls of 300 ms each leave room for
    // two waits only (0–300 call, wait to 400, call to 700, wait to 900, call
    // to 1200: the next wait would pass the deadline).
    let clock = ManualClock::default();
    let mut calls = 0;
    let e = p
        .run_blocking_on(&clock, Top, "svc", &always_transient, |_| {
            calls += 1;
            clock.advance(ms(300));
            Err::<(), _>("slow".to_owned())
        })
        .unwrap_err();
    assert_eq!((calls, e.stop), (3, Stop::Deadline));
    assert_eq!(clock.waits(), [ms(100), ms(200)]);
}

#[test]
fn a_permanent_failure_is_not_retried_and_a_success_ends_the_loop() {
    let clock = ManualClock::default();
    let p = policy(5, 100, 1000, 60_000);
    let classify = |e: &String| {
        if e.starts_with("400") {
            Transience::Permanent
        } else {
            Transience::Transient
        }
    };
    let e = p
        .run_blocking_on(&clock, Top, "svc", &classify, |_| {
            Err::<(), _>("400 bad request".to_owned())
        })
        .unwrap_err();
    assert_eq!((e.attempts.get(), e.stop), (1, Stop::Permanent));
    assert!(!e.transient());
    assert_eq!(e.to_string(), "400 bad request (permanent: not retried)");
    assert!(clock.waits().is_empty());
    // Transient twice, then a success: two waits, the value returned.
    let v = p
        .run_blocking_on(&clock, Top, "svc", &classify, |a| {
            if a.get() < 3 {
                Err("503".to_owned())
            } else {
                Ok(a.get() * 10)
            }
        })
        .unwrap();
    assert_eq!(v, 30);
    assert_eq!(clock.waits(), [ms(100), ms(200)]);
    // A transient failure then a permanent one stops at the permanent one.
    let e = p
        .run_blocking_on(&clock, Top, "svc", &classify, |a| {
            Err::<(), _>(if a.get() == 1 { "503" } else { "400" }.to_owned())
        })
        .unwrap_err();
    assert_eq!((e.error.as_str(), e.attempts.get()), ("400", 2));
    assert_eq!(e.retries(), 1);
    assert_eq!(
        e.to_string(),
        "400 (after 2 attempts; permanent: not retried further)"
    );
}

#[test]
fn a_node_error_says_whether_it_was_retried() {
    use crate::node::{Fault, NodeError};
    let clock = ManualClock::default();
    let p = policy(3, 10, 100, 60_000);
    let refused = || NodeError::Service {
        service: "redis://127.0.0.1:6379".into(),
        transient: false,
        message: "connecting redis://127.0.0.1:6379: WRONGPASS invalid username-password pair"
            .into(),
    };
    let e = p
        .run_blocking_on(&clock, Top, "svc", &super::node_transience, |_| {
            Err::<(), _>(refused())
        })
        .unwrap_err();
    assert_eq!(e.retries(), 0);
    let e = e.into_node_error();
    assert_eq!(e.fault(), Fault::Service { transient: false });
    assert_eq!(
        e.to_string(),
        "connecting redis://127.0.0.1:6379: WRONGPASS invalid username-password pair (permanent: not retried)"
    );
    assert!(clock.waits().is_empty());

    let down = || NodeError::Service {
        service: "nats://127.0.0.1:4222".into(),
        transient: true,
        message: "nats: no responders".into(),
    };
    let e = p
        .run_blocking_on(&clock, Top, "svc", &super::node_transience, |_| {
            Err::<(), _>(down())
        })
        .unwrap_err();
    assert_eq!(e.retries(), 2);
    assert_eq!(
        e.into_node_error().to_string(),
        "nats: no responders (after 3 attempts) (transient)"
    );
    let e = p
        .run_blocking_on(&clock, Top, "svc", &super::node_transience, |_| {
            Err::<(), _>(NodeError::config("there is no stream `s`"))
        })
        .unwrap_err()
        .into_node_error();
    assert_eq!(
        e.to_string(),
        "there is no stream `s` (permanent: not retried)"
    );
}

#[test]
fn the_async_loop_follows_the_same_schedule() {
    let clock = ManualClock::default();
    let p = policy(4, 50, 120, 60_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // The state each attempt changes goes in and comes back out.
    let (seen, result) = rt.block_on(p.run_on(
        &clock,
        Top,
        "svc",
        &always_transient,
        Vec::new(),
        |mut seen: Vec<u32>, a| async move {
            seen.push(a.get());
            (seen, Err::<(), _>(format!("try {a}")))
        },
    ));
    assert_eq!(seen, [1, 2, 3, 4]);
    assert_eq!(clock.waits(), [ms(50), ms(100), ms(120)]);
    assert_eq!(result.unwrap_err().to_string(), "try 4 (after 4 attempts)");
}

#[test]
fn the_config_has_defaults_units_and_no_unknown_keys() {
    let p: RetryPolicy = toml::from_str("").unwrap();
    assert_eq!(p, RetryPolicy::default());
    assert_eq!(
        (
            p.attempts.get(),
            p.backoff.0,
            p.multiplier,
            p.max_wait.0,
            p.deadline.0
        ),
        (10, ms(100), 2.0, ms(10_000), ms(60_000))
    );
    // The default schedule's ceilings add up to about 33 s: a restart of a
    // few seconds is ridden out.
    let total: Duration = (0..p.attempts.get() - 1).map(|n| p.ceiling(n)).sum();
    assert_eq!(total, ms(32_700));
    let p: RetryPolicy = toml::from_str(
        "attempts = 2\nbackoff = \"5ms\"\nmultiplier = 3.0\nmax_wait = \"1s\"\ndeadline = \"2m\"",
    )
    .unwrap();
    assert_eq!(p.ceiling(1), ms(15));
    assert_eq!(p.deadline.0, ms(120_000));
    let e = toml::from_str::<RetryPolicy>("retries = 3").unwrap_err();
    assert!(e.to_string().contains("unknown field `retries`"), "{e}");
    assert!(toml::from_str::<RetryPolicy>("attempts = 0").is_err());
    for (bad, says) in [
        ("multiplier = 0.5", "multiplier"),
        ("deadline = \"0ms\"", "deadline"),
        ("backoff = \"2s\"\nmax_wait = \"1s\"", "max_wait"),
    ] {
        let p: RetryPolicy = toml::from_str(bad).unwrap();
        assert!(p.check().unwrap_err().contains(says), "{bad}");
    }
}
