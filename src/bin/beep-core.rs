//! `beep-core`: the core service alone, for a split deployment
//! (`cargo build --release --no-default-features --features core --bin beep-core`).

use std::process::ExitCode;

fn main() -> ExitCode {
    beep::cli::main(&["core"])
}
