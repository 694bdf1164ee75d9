//! Writing a command's output to stdout, where a reader that stops early (`weir
//! lineage … | head`) ends the command quietly instead of panicking: Rust
//! ignores SIGPIPE, so `println!` panics on a closed pipe.

use std::fmt;
use std::io::{ErrorKind, Write as _};

/// Writes `args` to stdout; a closed pipe ends the process with status 0 (the
/// reader has what it wanted), any other error is reported and exits 1.
pub fn write(args: fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing the output: {e}");
        std::process::exit(1);
    }
}

/// `print!` that ends the command quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!($($arg)*))
    };
}

/// `println!` that ends the command quietly on a closed pipe.
macro_rules! outln {
    () => {
        $crate::cli::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};
