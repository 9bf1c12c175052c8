//! `beep-permissions`: the permissions service alone, for a split deployment
//! (`cargo build --release --no-default-features --features permissions --bin beep-permissions`).

use std::process::ExitCode;

fn main() -> ExitCode {
    beep::cli::main(&["permissions"])
}
