//! Which watches the API server has just accepted: a layer on kube's client stack (tower)
//! that counts, per watched resource, the watch requests answered with a success status.
//!
//! kube-runtime's watcher resumes a broken watch from its last resourceVersion without an
//! event of its own (a resumed watch with nothing new to say is silent), so the Kubernetes
//! source would not know that an outage ended until the next change. The API server's
//! `200` to the resumed watch is that moment; the source's watcher task subscribes to the
//! counter of its resource ([`WatchStarts::subscribe`]) and reports the watch as resumed.
//!
//! Owns: three `watch` channels. Touches nothing of the request or the response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;

/// The collection paths of the watched resources, in the order of [`WatchStarts::subscribe`]'s
/// index: Services, EndpointSlices, ServiceCIDRs (all namespaces).
pub const WATCHED: [&str; 3] = [
    "/api/v1/services",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/apis/networking.k8s.io/v1/servicecidrs",
];

/// Counters of accepted watch requests per resource; also the tower layer that keeps them.
#[derive(Clone, Debug)]
pub struct WatchStarts {
    counters: Arc<[watch::Sender<u64>; 3]>,
}

impl Default for WatchStarts {
    fn default() -> Self {
        WatchStarts {
            counters: Arc::new(std::array::from_fn(|_| watch::channel(0).0)),
        }
    }
}

impl WatchStarts {
    /// The counter of the resource at `index` of [`WATCHED`].
    pub fn subscribe(&self, index: usize) -> watch::Receiver<u64> {
        self.counters[index.min(2)].subscribe()
    }

    /// Which watched resource a request is a watch of, if any.
    fn watch_of(uri: &http::Uri) -> Option<usize> {
        let watching = uri
            .query()
            .unwrap_or("")
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1");
        if !watching {
            return None;
        }
        WATCHED.iter().position(|p| *p == uri.path())
    }
}

impl<S> tower::Layer<S> for WatchStarts {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            starts: self.clone(),
        }
    }
}

/// The client service wrapped by [`WatchStarts`].
#[derive(Clone, Debug)]
pub struct Observed<S> {
    inner: S,
    starts: WatchStarts,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let watched = WatchStarts::watch_of(req.uri());
        let answer = self.inner.call(req);
        let starts = self.starts.clone();
        Box::pin(async move {
            let result = answer.await;
            if let (Some(i), Ok(response)) = (watched, &result) {
                if response.status().is_success() {
                    starts.counters[i].send_modify(|n| *n += 1);
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service};

    /// A service answering every request with `status`.
    #[derive(Clone)]
    struct Answer(u16);

    impl tower::Service<http::Request<()>> for Answer {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<http::Response<()>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut r = http::Response::new(());
            *r.status_mut() = http::StatusCode::from_u16(self.0).unwrap();
            std::future::ready(Ok(r))
        }
    }

    fn get(uri: &str) -> http::Request<()> {
        http::Request::get(uri).body(()).unwrap()
    }

    #[tokio::test]
    async fn accepted_watches_are_counted_per_resource() {
        let starts = WatchStarts::default();
        let services = starts.subscribe(0);
        let slices = starts.subscribe(1);
        let mut ok = starts.layer(Answer(200));
        let mut failing = starts.layer(Answer(500));
        let watch = "/apis/discovery.k8s.io/v1/endpointslices?&watch=true&resourceVersion=7";
        ok.call(get(watch)).await.unwrap();
        // A list, a failed watch and another path are not accepted watches.
        ok.call(get("/apis/discovery.k8s.io/v1/endpointslices?limit=500"))
            .await
            .unwrap();
        failing.call(get(watch)).await.unwrap();
        ok.call(get("/api/v1/namespaces/a/services?watch=true"))
            .await
            .unwrap();
        assert_eq!(*slices.borrow(), 1);
        assert_eq!(*services.borrow(), 0);
        ok.call(get("/api/v1/services?watch=1")).await.unwrap();
        assert_eq!(*services.borrow(), 1);
    }
}
