//! auth: phone and email OTP login, JWT access and refresh tokens, and the verification of every request (`/login`, `/auth`).
//!
//! Its routes, tables and workers arrive with its own issue; until then it is hosted (its
//! migration table exists, it is listed in `beep`'s service set) and serves nothing.

use super::Service;

pub struct Auth;

impl Service for Auth {
    fn name(&self) -> &'static str {
        "auth"
    }
}
