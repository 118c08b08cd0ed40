//! The response future of a layer that either refuses a request at once or passes it on.
//!
//! Request checks and authorization decide before calling the inner service; a refusal
//! becomes an error the one classifier answers. One future shape serves both, with no box.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use mesh_core::BoxError;
use pin_project_lite::pin_project;

pin_project! {
    /// The inner response, or the refusal.
    #[derive(Debug)]
    pub(crate) struct RefuseOr<F> {
        #[pin]
        inner: Option<F>,
        refused: Option<BoxError>,
    }
}

impl<F> RefuseOr<F> {
    /// Passes the request on: the inner response future.
    pub(crate) fn call(inner: F) -> Self {
        Self {
            inner: Some(inner),
            refused: None,
        }
    }

    /// Refuses the request with `error`.
    pub(crate) fn refuse(error: impl Into<BoxError>) -> Self {
        Self {
            inner: None,
            refused: Some(error.into()),
        }
    }
}

impl<F, T, E> Future for RefuseOr<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(refused) = this.refused.take() {
            return Poll::Ready(Err(refused));
        }
        match this.inner.as_pin_mut() {
            Some(f) => f.poll(cx).map_err(Into::into),
            None => Poll::Pending,
        }
    }
}
