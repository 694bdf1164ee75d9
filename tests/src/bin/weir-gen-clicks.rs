//! `weir-gen-clicks small|large [seed] > events.jsonl`: the reference workload's
//! seeded click-event generator (see `examples/clickstream/README.md`).

use std::io::Write;

use weir_e2e::clicks::{ClickConfig, generate};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut config = match args.next().as_deref() {
        Some("small") => ClickConfig::small(),
        Some("large") => ClickConfig::large(),
        _ => {
            eprintln!("usage: weir-gen-clicks small|large [seed] > events.jsonl");
            std::process::exit(2);
        }
    };
    if let Some(seed) = args.next() {
        config.seed = seed.parse().unwrap_or_else(|_| {
            eprintln!("the seed must be an integer, not `{seed}`");
            std::process::exit(2)
        });
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    generate(config, &mut out)?;
    out.flush()
}
