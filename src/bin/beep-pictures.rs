//! `beep-pictures`: the pictures service alone, for a split deployment
//! (`cargo build --release --no-default-features --features pictures --bin beep-pictures`).

use std::process::ExitCode;

fn main() -> ExitCode {
    beep::cli::main(&["pictures"])
}
