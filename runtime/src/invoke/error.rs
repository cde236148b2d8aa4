//! Errors that cross the HTTP boundary, and the status each one gets.
//!
//! Callers branch on these (the admin API on [`DeployError`], the data plane on
//! [`InvokeError`]); orchestration code elsewhere uses `anyhow` with context. The client sees a
//! short, fixed message; the log gets the detail.

use http::{HeaderValue, Response, StatusCode};
use wasmtime::Trap;
use wasmtime::component::ResourceTableError;

use super::body::{ResponseBody, full};
use crate::guest::limit::Limit;
use crate::guest::limiter::MemoryLimitHit;

/// Why a request to a function did not get the function's own response.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// No route matches the path.
    #[error("no function serves this path")]
    NotFound,
    /// Over the function's rate (`rate_per_s`) or its client's (`client_rate_per_s`); the
    /// wait before a request would be taken.
    #[error("over the function's rate limit; room again in {0:?}")]
    RateLimited(std::time::Duration),
    /// The request pins a version (`x-thaw-version`) that its function's split does not
    /// list, or that is not a version at all.
    #[error("the pinned version is not one this function serves")]
    NoSuchVersion,
    /// The request body is over the function's limit.
    #[error("request body over the limit of {0} bytes")]
    BodyTooLarge(u64),
    /// The request body arrived too slowly (see [`crate::body::read_bounded`]).
    #[error("request body too slow: {received} bytes before the deadline")]
    BodyTooSlow {
        /// Bytes received by then.
        received: u64,
    },
    /// Every instance slot is busy and none freed up within the queue timeout.
    #[error("all instance slots are busy")]
    Overloaded,
    /// The function's concurrency limit is reached (the reason says how).
    #[error("the function's concurrency limit is reached: {0}")]
    ConcurrencyLimit(&'static str),
    /// The function has `async.max_queued` asynchronous invocations queued already.
    #[error("{0} asynchronous invocations are queued, the function's async.max_queued")]
    TooManyQueued(u32),
    /// The queue of asynchronous invocations cannot take one now (its server is away).
    #[error("the asynchronous invocation queue is unavailable: {0}")]
    QueueUnavailable(String),
    /// The request's header section is over the function's limits.
    #[error("request headers over the limit: {0}")]
    HeadersTooLarge(String),
    /// The guest used up its CPU fuel.
    #[error("function ran out of CPU fuel")]
    OutOfFuel,
    /// The guest tried to grow its memory past the limit.
    #[error("function hit its memory limit: {0}")]
    MemoryLimit(String),
    /// The guest held more host resources than its `max_host_resources`.
    #[error("function hit its host resource limit: {0}")]
    HostResourceLimit(String),
    /// The guest's response body went past the limit.
    #[error("response body over the limit of {0} bytes; the function was stopped")]
    ResponseTooLarge(u64),
    /// The function ran past its timeout.
    #[error("function timed out")]
    Timeout,
    /// The guest trapped (panic, `unreachable`, memory limit, stack overflow, ...).
    #[error("function trapped: {0}")]
    Trap(String),
    /// A CGI module exited with a non-zero status.
    #[error("function exited with status {0}")]
    Exit(i32),
    /// The guest answered its `response-outparam` with an error code (a `wasi:http` guest's
    /// way of saying "I failed"); `wasmtime serve` answers 500 for it, and so does thaw.
    #[error("the function answered with an error: {0}")]
    GuestError(String),
    /// The guest returned without setting its response: its own fault, like a trap before
    /// the response, so 500 (as `wasmtime serve` answers), not an upstream's 502.
    #[error("the function returned without setting a response")]
    NoResponse,
    /// The guest's response is malformed (CGI output, a status that is not final).
    #[error("bad response from function: {0}")]
    BadResponse(String),
    /// The request cannot be handed to the guest.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Something failed in thaw itself.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A request body that could not be read, as the client is answered: 413, 408, or 400.
impl From<crate::invoke::body::ReadBodyError> for InvokeError {
    fn from(e: crate::invoke::body::ReadBodyError) -> Self {
        use crate::invoke::body::ReadBodyError;
        match e {
            ReadBodyError::TooLarge(limit) => InvokeError::BodyTooLarge(limit),
            ReadBodyError::TooSlow { received } => InvokeError::BodyTooSlow { received },
            ReadBodyError::Failed(e) => {
                InvokeError::BadRequest(format!("reading the request body: {e}"))
            }
        }
    }
}

impl InvokeError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            InvokeError::NotFound | InvokeError::NoSuchVersion => StatusCode::NOT_FOUND,
            InvokeError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            InvokeError::BodyTooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
            InvokeError::Overloaded
            | InvokeError::ConcurrencyLimit(_)
            | InvokeError::QueueUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            InvokeError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            InvokeError::TooManyQueued(_) | InvokeError::RateLimited(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            InvokeError::Timeout | InvokeError::OutOfFuel => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::Trap(_)
            | InvokeError::NoResponse
            | InvokeError::GuestError(_)
            | InvokeError::MemoryLimit(_)
            | InvokeError::HostResourceLimit(_)
            | InvokeError::Exit(_)
            | InvokeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            InvokeError::BadResponse(_) | InvokeError::ResponseTooLarge(_) => {
                StatusCode::BAD_GATEWAY
            }
            InvokeError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The fixed body the client gets: the class of failure, not its detail (which may
    /// mention host paths or guest internals; it goes to the log).
    fn public_message(&self) -> &'static str {
        match self {
            InvokeError::NotFound => "no function serves this path\n",
            InvokeError::RateLimited(_) => "too many requests, retry after Retry-After seconds\n",
            InvokeError::NoSuchVersion => "this function serves no such version (x-thaw-version)\n",
            InvokeError::BodyTooLarge(_) => "request body too large\n",
            InvokeError::BodyTooSlow { .. } => "request body too slow\n",
            InvokeError::Overloaded | InvokeError::ConcurrencyLimit(_) => {
                "all instances are busy, retry shortly\n"
            }
            InvokeError::HeadersTooLarge(_) => "request headers too large\n",
            InvokeError::QueueUnavailable(_) => {
                "the asynchronous invocation queue is unavailable, retry shortly\n"
            }
            InvokeError::TooManyQueued(_) => {
                "too many asynchronous invocations queued, retry shortly\n"
            }
            InvokeError::Timeout => "function timed out\n",
            InvokeError::OutOfFuel => "function ran out of CPU time\n",
            InvokeError::Trap(_) => "function failed (trap)\n",
            InvokeError::GuestError(_) => "function failed (error code)\n",
            InvokeError::NoResponse => "function failed (no response)\n",
            InvokeError::MemoryLimit(_) => "function failed (memory limit)\n",
            InvokeError::HostResourceLimit(_) => "function failed (host resource limit)\n",
            InvokeError::ResponseTooLarge(_) => "function response too large\n",
            InvokeError::Exit(_) => "function failed (non-zero exit)\n",
            InvokeError::BadResponse(_) => "function sent a malformed response\n",
            InvokeError::BadRequest(_) => "bad request\n",
            InvokeError::Internal(_) => "internal error\n",
        }
    }

    /// The limit this error is a hit of, if it is one. Exhaustive on purpose: a new variant
    /// must say whether it is a limit, or it is not counted.
    pub fn limit(&self) -> Option<Limit> {
        Some(match self {
            InvokeError::Timeout => Limit::Timeout,
            InvokeError::OutOfFuel => Limit::Fuel,
            InvokeError::MemoryLimit(_) => Limit::Memory,
            InvokeError::HostResourceLimit(_) => Limit::HostResources,
            InvokeError::Overloaded | InvokeError::ConcurrencyLimit(_) => Limit::Concurrency,
            InvokeError::BodyTooLarge(_) => Limit::RequestBody,
            InvokeError::BodyTooSlow { .. } => Limit::SlowRequestBody,
            InvokeError::HeadersTooLarge(_) => Limit::Headers,
            InvokeError::TooManyQueued(_) => Limit::AsyncQueue,
            InvokeError::RateLimited(_) => Limit::Rate,
            InvokeError::ResponseTooLarge(_) => Limit::ResponseBody,
            InvokeError::NotFound
            | InvokeError::NoSuchVersion
            | InvokeError::Trap(_)
            | InvokeError::NoResponse
            | InvokeError::GuestError(_)
            | InvokeError::Exit(_)
            | InvokeError::BadResponse(_)
            | InvokeError::BadRequest(_)
            | InvokeError::QueueUnavailable(_)
            | InvokeError::Internal(_) => return None,
        })
    }

    /// The response for this error.
    pub fn into_response(self) -> Response<ResponseBody> {
        let mut response = Response::new(full(self.public_message()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let InvokeError::RateLimited(wait) = self {
            // Whole seconds, rounded up: a client that waits that long finds room.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if matches!(
            self,
            InvokeError::Overloaded
                | InvokeError::ConcurrencyLimit(_)
                | InvokeError::TooManyQueued(_)
                | InvokeError::QueueUnavailable(_)
        ) {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Sorts a guest failure by type, never by message: an epoch interrupt is a timeout, running
/// out of fuel or memory ([`MemoryLimitHit`], from thaw's own limiter) or of host resources
/// (a full [`ResourceTable`](wasmtime::component::ResourceTable), capped at the function's
/// `max_host_resources`) a limit hit, everything else a trap with its message (which names
/// the trap code and, with `addr2line`, the guest's frames).
pub fn classify(error: wasmtime::Error) -> InvokeError {
    classify_ref(&error)
}

/// [`classify`] for an error shared by several requests (a WASIp3 instance's failure).
pub fn classify_ref(error: &wasmtime::Error) -> InvokeError {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => InvokeError::Timeout,
        Some(Trap::OutOfFuel) => InvokeError::OutOfFuel,
        _ if error.downcast_ref::<MemoryLimitHit>().is_some() => {
            InvokeError::MemoryLimit(format!("{error:?}"))
        }
        _ if matches!(
            error.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        ) =>
        {
            InvokeError::HostResourceLimit(format!("{error:?}"))
        }
        // The message names the guest's frames (from its own name section): escaped, as
        // any guest text in the host's log.
        _ => InvokeError::Trap(
            crate::guest::log::escape_controls(&format!("{error:?}")).into_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_failures_are_classified_by_type() {
        let timeout = wasmtime::Error::from(Trap::Interrupt);
        assert!(matches!(classify(timeout), InvokeError::Timeout));
        let fuel = wasmtime::Error::from(Trap::OutOfFuel);
        assert!(matches!(classify(fuel), InvokeError::OutOfFuel));
        // Whatever context wasmtime adds on the way out, the type is still found.
        let memory = wasmtime::Error::from(MemoryLimitHit {
            desired: 2 << 20,
            limit: 1 << 20,
        })
        .context("error while executing at wasm backtrace");
        assert!(matches!(classify(memory), InvokeError::MemoryLimit(_)));
        let full = wasmtime::Error::from(ResourceTableError::Full).context("fields.new");
        assert!(matches!(classify(full), InvokeError::HostResourceLimit(_)));
        let trap = wasmtime::Error::from(Trap::UnreachableCodeReached);
        assert!(matches!(classify(trap), InvokeError::Trap(_)));
    }
}
