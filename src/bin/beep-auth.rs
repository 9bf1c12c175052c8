//! `beep-auth`: the auth service alone, for a split deployment
//! (`cargo build --release --no-default-features --features auth --bin beep-auth`).

use std::process::ExitCode;

fn main() -> ExitCode {
    beep::cli::main(&["auth"])
}
