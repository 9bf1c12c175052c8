//! The narrow question auth asks of core: "the user behind this phone number or email,
//! created if new". core owns the `user` table and implements [`UserDirectory`]; `app.rs` hands
//! the implementation to auth, which never imports core.

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// A phone number in E.164 form (`+6591234567`), parsed and validated against the numbering
/// plan of its country, not matched by a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Accepts any common notation of an international number (`+65 9123 4567`,
    /// `+1 (415) 555-2671`); a country code is required, as in the original.
    pub fn parse(input: &str) -> Result<Self, InvalidLogin> {
        let input = input.trim();
        if input.is_empty() || input.len() > 40 {
            return Err(InvalidLogin::Phone);
        }
        let number = phonenumber::parse(None, input).map_err(|_| InvalidLogin::Phone)?;
        if !number.is_valid() {
            return Err(InvalidLogin::Phone);
        }
        Ok(Self(
            number.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The country calling code (`65` for `+6591234567`); several countries may share one
    /// (`1`: the North American plan).
    pub fn calling_code(&self) -> u16 {
        phonenumber::parse(None, &self.0)
            .map(|number| number.code().value())
            .unwrap_or(0)
    }
}

/// An email address, lowercased so one mailbox is one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(input: &str) -> Result<Self, InvalidLogin> {
        let input = input.trim().to_lowercase();
        if input.len() > 254 {
            return Err(InvalidLogin::Email);
        }
        let address: lettre::Address = input.parse().map_err(|_| InvalidLogin::Email)?;
        Ok(Self(address.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLogin {
    #[error("not a valid international phone number (E.164, with its + country code)")]
    Phone,
    #[error("not a valid email address")]
    Email,
}

/// What a user logs in with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Login {
    Phone(PhoneNumber),
    Email(Email),
}

impl Login {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Phone(phone) => phone.as_str(),
            Self::Email(email) => email.as_str(),
        }
    }
}

impl fmt::Display for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Logins travel as their text and are validated again when read back (serde's
/// `try_from`/`into` on the two types).
impl TryFrom<String> for PhoneNumber {
    type Error = InvalidLogin;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<PhoneNumber> for String {
    fn from(phone: PhoneNumber) -> Self {
        phone.0
    }
}

impl TryFrom<String> for Email {
    type Error = InvalidLogin;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<Email> for String {
    fn from(email: Email) -> Self {
        email.0
    }
}

/// The user a login resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownUser {
    pub id: String,
    /// Created by this call.
    pub created: bool,
}

/// The profile sent to the original `POST /register/:code/:nonce` (core's `User` fields).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct NewProfile {
    pub username: Option<String>,
    pub bio: String,
    pub profile_pic: String,
    pub first_name: String,
    pub last_name: String,
}

/// A user as the original core serialised it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = User)]
pub struct UserRecord {
    pub id: String,
    pub username: Option<String>,
    pub bio: String,
    pub profile_pic: String,
    pub first_name: String,
    pub last_name: String,
    /// Shown to the user themself and to users who hold them as a contact; `null` to everyone
    /// else (the field stays, so the original clients still parse it). Empty for a user who
    /// logs in by email.
    #[schema(example = "+6591234567")]
    pub phone_number: Option<String>,
}

impl UserRecord {
    /// The record as a viewer who may not see the phone number gets it.
    pub fn without_phone_number(self) -> Self {
        Self {
            phone_number: None,
            ..self
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The request was wrong (a field too long, an empty name): the message says what.
    #[error("{0}")]
    Invalid(String),
    /// A user already holds this login or username.
    #[error("{0}")]
    Conflict(String),
    /// The owner of users (core, in another process) does not answer.
    #[error("users cannot be looked up: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Backend(#[from] anyhow::Error),
}

pub type DirectoryResult<T> = Result<T, DirectoryError>;

/// Implemented by core in-process (and by a client of core in a split deployment).
pub trait UserDirectory: Send + Sync + 'static {
    /// The user holding `login`, created (with an empty profile) if there is none.
    fn ensure_user<'a>(&'a self, login: &'a Login) -> BoxFuture<'a, DirectoryResult<KnownUser>>;

    /// Creates a user holding `login` with `profile` (the original register flow).
    fn register_user<'a>(
        &'a self,
        login: &'a Login,
        profile: NewProfile,
    ) -> BoxFuture<'a, DirectoryResult<UserRecord>>;
}

pub type SharedDirectory = Arc<dyn UserDirectory>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_normalised_to_e164() {
        let parsed = PhoneNumber::parse("+65 9123 4567").map(|p| p.as_str().to_owned());
        assert_eq!(parsed.as_deref(), Ok("+6591234567"));
        let parsed = PhoneNumber::parse("+1 (415) 555-2671").map(|p| p.as_str().to_owned());
        assert_eq!(parsed.as_deref(), Ok("+14155552671"));
        for bad in [
            "",
            "91234567",
            "+999 123",
            "+65 1",
            "not a number",
            "+6591234567999999",
        ] {
            assert_eq!(PhoneNumber::parse(bad), Err(InvalidLogin::Phone), "{bad:?}");
        }
    }

    #[test]
    fn logins_round_trip_as_text_and_are_checked_when_read() {
        let login =
            Login::Phone(PhoneNumber::parse("+65 9123 4567").unwrap_or_else(|e| panic!("{e}")));
        let json = serde_json::to_string(&login).unwrap_or_default();
        assert_eq!(json, r#"{"kind":"phone","value":"+6591234567"}"#);
        assert_eq!(serde_json::from_str::<Login>(&json).ok(), Some(login));
        assert!(serde_json::from_str::<Login>(r#"{"kind":"email","value":"nope"}"#).is_err());
    }

    #[test]
    fn emails_are_lowercased_and_checked() {
        let parsed = Email::parse(" Alice@Example.COM ").map(|e| e.as_str().to_owned());
        assert_eq!(parsed.as_deref(), Ok("alice@example.com"));
        for bad in ["", "alice", "@example.com", "a@", "a b@example.com"] {
            assert_eq!(Email::parse(bad), Err(InvalidLogin::Email), "{bad:?}");
        }
    }
}
