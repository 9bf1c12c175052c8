//! `beep`: every service compiled into this build, in one process.

use std::process::ExitCode;

fn main() -> ExitCode {
    beep::cli::main(beep::services::COMPILED)
}
