//! `beep-auth`: the auth service alone, for a split deployment
//! (`cargo build --release --no-default-features --features auth,web --bin beep-auth`; `web`
//! serves the browser client too, which the split topology's proxy sends here).

use std::process::ExitCode;

fn main() -> ExitCode {
    beep::cli::main(&["auth"])
}
