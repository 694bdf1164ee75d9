//! `weir nats publish`: a JSON-lines file into a JetStream subject, the way
//! examples and tests fill the stream a `[source.jetstream]` reads.

use std::path::PathBuf;

use crate::cli::out::outln;
use anyhow::Context as _;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum NatsCommand {
    /// Publish the lines of a JSON-lines file (`-` for stdin), one message per
    /// line (or per `--lines-per-message` lines), pipelined, and wait until
    /// the server stored every one.
    Publish {
        /// The file; `-` reads stdin.
        file: PathBuf,
        /// The subject to publish on; a stream must capture it (see
        /// `--create-stream`).
        #[arg(long)]
        subject: String,
        /// The server.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        /// Create a stream of this name capturing SUBJECT if there is none.
        #[arg(long, value_name = "STREAM")]
        create_stream: Option<String>,
        /// Give line N the message id `PREFIX:N`: publishing the file again
        /// within the stream's duplicate window (2 minutes by default) then
        /// stores nothing twice.
        #[arg(long, value_name = "PREFIX")]
        msg_id_prefix: Option<String>,
        /// Put N lines in each message, joined by newlines: a source reads
        /// them with `payload = "lines"`. The server's cost is per message, so
        /// a producer that batches its events goes further on the same server.
        #[arg(long, value_name = "N", default_value = "1")]
        lines_per_message: std::num::NonZeroUsize,
    },
}

pub fn dispatch(cmd: NatsCommand) -> anyhow::Result<()> {
    match cmd {
        NatsCommand::Publish {
            file,
            subject,
            url,
            create_stream,
            msg_id_prefix,
            lines_per_message,
        } => {
            let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::BufReader::new(std::io::stdin()))
            } else {
                let f = std::fs::File::open(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                Box::new(std::io::BufReader::with_capacity(1 << 20, f))
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let started = std::time::Instant::now();
            let done = runtime.block_on(weir::connectors::jetstream::publish_lines(
                &url,
                &subject,
                create_stream.as_deref(),
                msg_id_prefix.as_deref(),
                lines_per_message,
                input,
            ))?;
            let secs = started.elapsed().as_secs_f64();
            outln!(
                "published {} messages to {subject} in {secs:.2}s ({:.0}/s); {} already in the stream, {} blank lines skipped{}",
                done.stored,
                (done.stored + done.duplicates) as f64 / secs.max(1e-9),
                done.duplicates,
                done.blank,
                if lines_per_message.get() > 1 {
                    format!("; {} lines in them", done.lines)
                } else {
                    String::new()
                }
            );
            Ok(())
        }
    }
}
