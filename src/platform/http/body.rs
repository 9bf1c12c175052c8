//! Request bodies that stop arriving: a client that sends a few bytes of a long body and then
//! nothing would hold its connection (and a worker's read) for as long as it likes. Each body
//! read fails once no byte has come for `http.body_timeout_secs`, answered 408 `body_timeout`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use super::ApiError;

/// A body that fails with a timed-out I/O error after `idle` without a byte.
pub struct IdleTimeout {
    body: Payload,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl IdleTimeout {
    pub fn new(body: Payload, idle: Duration) -> Self {
        Self {
            body,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl Stream for IdleTimeout {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_next(cx) {
            Poll::Ready(item) => {
                this.timer.as_mut().reset(Instant::now() + this.idle);
                Poll::Ready(item)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request body stopped arriving",
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The 408 for a body that timed out, if this is one.
pub fn timed_out(err: &PayloadError) -> Option<ApiError> {
    match err {
        PayloadError::Io(io) if io.kind() == io::ErrorKind::TimedOut => Some(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body stopped arriving",
        )),
        _ => None,
    }
}
