//! `beep-heartbeat`: the heartbeat service alone, for a split deployment
//! (`cargo build --release --no-default-features --features heartbeat --bin beep-heartbeat`).

use std::process::ExitCode;

fn main() -> ExitCode {
    beep::cli::main(&["heartbeat"])
}
