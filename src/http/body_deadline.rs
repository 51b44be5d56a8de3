//! A deadline on reading a request's body: a client that sends its body slowly (or stops
//! half-way) gets 408 and the connection is closed, instead of holding a worker's request open
//! for as long as it likes. The clock starts when the handler first reads the body.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{
    Error, HttpMessage,
    body::{BoxBody, MessageBody},
    dev::{Payload, ServiceRequest, ServiceResponse},
    error::PayloadError,
    http::{StatusCode, header},
    middleware::Next,
};
use bytes::Bytes;
use futures_util::Stream;
use tokio::time::Sleep;

use super::problem::Problem;

/// The body stream, ending with an error once `sleep` fires (and saying so through `expired`).
struct Deadline {
    inner: Payload,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        let timeout = self.timeout;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.expired.store(true, Ordering::Release);
                let err = std::io::Error::new(std::io::ErrorKind::TimedOut, "request body timed out");
                Poll::Ready(Some(Err(PayloadError::Io(err))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Wraps every request's body in a deadline of `timeout`; answers 408 when it passed.
pub async fn body_deadline(
    timeout: Duration,
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let expired = Arc::new(AtomicBool::new(false));
    let inner = req.take_payload();
    let stream = Deadline { inner, timeout, sleep: None, expired: expired.clone() };
    req.set_payload(Payload::Stream { payload: Box::pin(stream) });
    let res = next.call(req).await?.map_into_boxed_body();
    if !expired.load(Ordering::Acquire) {
        return Ok(res);
    }
    let mut answer = Problem::new(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time").response();
    // What is left of the body would be read as the next request: the connection ends here.
    answer.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
    answer.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    Ok(res.into_response(answer))
}
