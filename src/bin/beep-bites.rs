//! `beep-bites`: the bites service alone, for a split deployment
//! (`cargo build --release --no-default-features --features bites --bin beep-bites`).

use std::process::ExitCode;

fn main() -> ExitCode {
    beep::cli::main(&["bites"])
}
