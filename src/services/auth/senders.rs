//! Delivering one-time codes: by SMS (the log, or Twilio's Messages API) and by email (the log,
//! or SMTP). The log senders exist for development and say so loudly.

use std::time::Duration;

use anyhow::Context as _;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};

use super::error::SetupError;
use crate::config::{AuthConfig, EmailSender, SmsSender, TwilioConfig};
use crate::platform::users::Login;

/// Where the development senders write codes; tests read them from there.
pub const LOG_TARGET: &str = "beep::otp";

pub struct Senders {
    sms: Sms,
    email: Email,
}

enum Sms {
    Log,
    Twilio(Twilio),
}

struct Twilio {
    client: reqwest::Client,
    messages_url: String,
    config: TwilioConfig,
}

enum Email {
    Log,
    Smtp {
        mailer: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
}

impl Senders {
    /// Builds the configured senders; a wrong setting is reported before the server starts.
    pub fn new(config: &AuthConfig) -> Result<Self, SetupError> {
        let sms = match config.sms.sender {
            SmsSender::Log => Sms::Log,
            SmsSender::Twilio => {
                let twilio = &config.sms.twilio;
                if twilio.account_sid.is_empty() || twilio.auth_token.is_empty() {
                    return Err(SetupError::Setting(
                        "auth.sms.twilio needs account_sid and auth_token".into(),
                    ));
                }
                if twilio.messaging_service_sid.is_empty() == twilio.from_number.is_empty() {
                    return Err(SetupError::Setting(
                        "auth.sms.twilio needs exactly one of messaging_service_sid and from_number"
                            .into(),
                    ));
                }
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(twilio.timeout_secs))
                    .build()
                    .map_err(|err| SetupError::Setting(format!("auth.sms.twilio: {err}")))?;
                Sms::Twilio(Twilio {
                    client,
                    messages_url: format!(
                        "{}/2010-04-01/Accounts/{}/Messages.json",
                        twilio.base_url.trim_end_matches('/'),
                        twilio.account_sid
                    ),
                    config: twilio.clone(),
                })
            }
        };
        let email = match config.email.sender {
            EmailSender::Log => Email::Log,
            EmailSender::Smtp => {
                let settings = &config.email;
                let from: Mailbox = settings
                    .from
                    .parse()
                    .map_err(|err| SetupError::Setting(format!("auth.email.from: {err}")))?;
                let mut builder =
                    AsyncSmtpTransport::<Tokio1Executor>::from_url(&settings.smtp_url)
                        .map_err(|err| SetupError::Setting(format!("auth.email.smtp_url: {err}")))?
                        .timeout(Some(Duration::from_secs(settings.timeout_secs)));
                if !settings.smtp_username.is_empty() {
                    builder = builder.credentials(Credentials::new(
                        settings.smtp_username.clone(),
                        settings.smtp_password.expose().to_owned(),
                    ));
                }
                Email::Smtp {
                    mailer: builder.build(),
                    from,
                }
            }
        };
        if matches!(sms, Sms::Log) || matches!(email, Email::Log) {
            tracing::warn!(
                target: LOG_TARGET,
                "one-time codes are written to the log (auth.sms.sender / auth.email.sender = \"log\"): development only"
            );
        }
        Ok(Self { sms, email })
    }

    pub async fn send(&self, login: &Login, code: &str, valid_for: Duration) -> anyhow::Result<()> {
        let minutes = valid_for.as_secs().div_ceil(60).max(1);
        let text = format!("Your OTP for Beep is {code}. It expires in {minutes} minutes.");
        match (login, &self.sms, &self.email) {
            (Login::Phone(_), Sms::Log, _) | (Login::Email(_), _, Email::Log) => {
                log_code(login.as_str(), code);
                Ok(())
            }
            (Login::Phone(phone), Sms::Twilio(twilio), _) => {
                twilio.send(phone.as_str(), &text).await
            }
            (Login::Email(email), _, Email::Smtp { mailer, from }) => {
                let to: Mailbox = email.as_str().parse().context("recipient address")?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject("Your Beep code")
                    .header(ContentType::TEXT_PLAIN)
                    .body(text)
                    .context("building the email")?;
                mailer.send(message).await.context("SMTP delivery")?;
                Ok(())
            }
        }
    }
}

/// The development senders' log line. The destination is escaped as the JSON format escapes
/// it (`\n`, `\u{1b}`, …), so a crafted address cannot forge lines in the pretty format.
fn log_code(destination: &str, code: &str) {
    tracing::warn!(
        target: LOG_TARGET,
        destination = %destination.escape_debug(),
        code,
        "DEVELOPMENT: one-time code written to the log instead of being sent"
    );
}

impl Twilio {
    async fn send(&self, to: &str, body: &str) -> anyhow::Result<()> {
        let mut form = vec![("To", to), ("Body", body)];
        if self.config.messaging_service_sid.is_empty() {
            form.push(("From", &self.config.from_number));
        } else {
            form.push(("MessagingServiceSid", &self.config.messaging_service_sid));
        }
        let response = self
            .client
            .post(&self.messages_url)
            .basic_auth(
                &self.config.account_sid,
                Some(self.config.auth_token.expose()),
            )
            .form(&form)
            .send()
            .await
            .context("Twilio request")?;
        let status = response.status();
        if !status.is_success() {
            // Twilio's error bodies carry a code and a message, never our credentials.
            let detail = response.text().await.unwrap_or_default();
            let detail: String = detail.chars().take(300).collect();
            anyhow::bail!("Twilio answered {status}: {detail}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_crafted_destination_cannot_forge_pretty_log_lines() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            log_code(
                "a@example.com\n2026-01-01T00:00:00Z  INFO login user_id=admin\u{1b}[2J",
                "123456",
            );
        });
        let written = String::from_utf8(buffer.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(written.lines().count(), 1, "{written}");
        assert!(!written.contains('\u{1b}'), "{written}");
        assert!(written.contains(r"a@example.com\n2026"), "{written}");
    }
}
