//! A seeded generator of click events in the shape of the reference workload
//! (`WORKLOAD.md`): users visit in bursts (sessions of a few to a few dozen
//! events), events arrive roughly in time order but up to 5 s out of order, and
//! about 1% of lines are corrupt, a quarter of them of each kind (truncated JSON,
//! missing `user_id`, negative `price`, non-integer `ts`).
//!
//! Deterministic: the same size and seed give the same bytes on every machine
//! (splitmix64, no floating-point formatting beyond two fixed decimals).

use std::io::Write;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct ClickConfig {
    /// Events (lines) in total, corrupt ones included.
    pub events: usize,
    /// Distinct users.
    pub users: usize,
    /// Distinct items.
    pub items: usize,
    /// The time span the events cover, in milliseconds.
    pub span_ms: i64,
    /// The seed.
    pub seed: u64,
}

impl ClickConfig {
    /// The small set: 20,000 events, 500 users, one day.
    pub fn small() -> Self {
        Self {
            events: 20_000,
            users: 500,
            items: 2_000,
            span_ms: 86_400_000,
            seed: 42,
        }
    }

    /// The large set: 2,000,000 events, 50,000 users, seven days.
    pub fn large() -> Self {
        Self {
            events: 2_000_000,
            users: 50_000,
            items: 100_000,
            span_ms: 7 * 86_400_000,
            seed: 42,
        }
    }
}

/// The first event time: 2024-01-01T00:00:00Z.
const START_MS: i64 = 1_704_067_200_000;
/// Events arrive at most this far behind the latest one.
const MAX_DISORDER_MS: u64 = 5_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Event {
    arrival: i64,
    ts: i64,
    user: u32,
    kind: u8,
    item: u32,
    price_cents: Option<u32>,
    dwell_ms: u32,
    label: Option<u8>,
}

/// Writes `config.events` lines of JSON to `out`.
///
/// # Errors
/// Writing fails.
pub fn generate(config: ClickConfig, out: &mut impl Write) -> std::io::Result<()> {
    let mut rng = Rng(config.seed);
    let mut events = Vec::with_capacity(config.events);
    while events.len() < config.events {
        // One visit: a user, a start, a burst of events seconds to minutes apart,
        // sometimes with a pause longer than the 30 min session gap.
        let user = rng.below(config.users as u64) as u32;
        let mut ts = START_MS + rng.below(config.span_ms as u64) as i64;
        let len = 1 + rng.below(30) as usize;
        for _ in 0..len.min(config.events - events.len()) {
            let kind = match rng.below(100) {
                0..70 => 0,
                70..90 => 1,
                90..97 => 2,
                _ => 3,
            };
            let price_cents = (rng.below(10) != 0).then(|| {
                let scale = [1_000, 5_000, 10_000, 50_000, 200_000][rng.below(5) as usize];
                rng.below(scale) as u32
            });
            let label = match rng.below(3) {
                0 => None,
                l => Some((l - 1) as u8),
            };
            events.push(Event {
                arrival: ts + rng.below(MAX_DISORDER_MS) as i64,
                ts,
                user,
                kind,
                item: rng.below(config.items as u64) as u32,
                price_cents,
                dwell_ms: rng.below(60_000) as u32,
                label,
            });
            ts += match rng.below(20) {
                0 => 1_800_000 + rng.below(3_600_000) as i64,
                1 => 1_800_000,
                _ => 1_000 + rng.below(600_000) as i64,
            };
        }
    }
    // Arrival order: time plus a jitter under 5 s, so no event arrives more than
    // 5 s behind one before it.
    events.sort_by_key(|e| (e.arrival, e.ts, e.user));
    let kinds = ["view", "click", "add_to_cart", "purchase"];
    let mut line = String::with_capacity(160);
    for e in &events {
        use std::fmt::Write as _;
        line.clear();
        let corrupt = rng.below(400);
        let price = match e.price_cents {
            None => "null".to_owned(),
            Some(_) if corrupt == 2 => "-4.25".to_owned(),
            Some(c) => format!("{}.{:02}", c / 100, c % 100),
        };
        let label = e.label.map_or("null".to_owned(), |l| l.to_string());
        let user = if corrupt == 1 {
            String::new()
        } else {
            format!("\"user_id\":\"u{}\",", e.user)
        };
        let ts = match corrupt {
            3 if e.ts % 2 == 0 => format!("\"{}\"", e.ts),
            3 => format!("{}.0", e.ts),
            _ => e.ts.to_string(),
        };
        let price = if corrupt == 2 && e.price_cents.is_none() {
            "-1.5".to_owned()
        } else {
            price
        };
        let _ = write!(
            line,
            "{{{user}\"ts\":{ts},\"event\":\"{}\",\"item_id\":\"i{}\",\"price\":{price},\"dwell_ms\":{},\"label\":{label}}}",
            kinds[e.kind as usize], e.item, e.dwell_ms
        );
        if corrupt == 0 {
            let cut = line.len() / 2;
            line.truncate(cut);
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_and_corrupts_about_one_percent() {
        let config = ClickConfig {
            events: 4000,
            ..ClickConfig::small()
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        generate(config, &mut a).unwrap();
        generate(config, &mut b).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a).unwrap();
        assert_eq!(text.lines().count(), 4000);
        let bad = text
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
            .count();
        assert!((5..=20).contains(&bad), "{bad} truncated lines");
    }
}
