//! `hello.Greeter`: a gRPC service with a unary and a server-streaming method, written
//! against tonic's server and client primitives (no code generation step).
//!
//! ```proto
//! package hello;
//! service Greeter {
//!   rpc SayHello (HelloRequest) returns (HelloReply);
//!   rpc SayHelloStream (HelloRequest) returns (stream HelloReply);
//! }
//! message HelloRequest { string name = 1; uint32 count = 2; }
//! message HelloReply { string message = 1; }
//! ```
//!
//! A name of `""` answers `INVALID_ARGUMENT`; a name starting with `fail:` answers
//! `NOT_FOUND` with the rest as the message, so tests can check error statuses end to end.
//! A stream for a name starting with `break:` sends its replies, then ends with
//! `UNAVAILABLE` in the trailers (a failure only the trailers tell).

use std::future::Future;
use std::pin::Pin;

use futures_util::Stream;
use http::uri::PathAndQuery;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The unary method's path.
pub const SAY_HELLO: &str = "/hello.Greeter/SayHello";
/// The server-streaming method's path.
pub const SAY_HELLO_STREAM: &str = "/hello.Greeter/SayHelloStream";

/// `hello.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
    /// How many replies the streaming method sends (default 3, at most 1000).
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// `hello.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

fn check(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("name must not be empty"));
    }
    if let Some(msg) = name.strip_prefix("fail:") {
        return Err(Status::not_found(msg.to_owned()));
    }
    if let Some(msg) = name.strip_prefix("unavailable:") {
        return Err(Status::unavailable(msg.to_owned()));
    }
    // The first call with a given key fails UNAVAILABLE, later ones succeed (for retries).
    if let Some(key) = name.strip_prefix("unavailable-once:") {
        static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.iter().any(|k| k == key) {
            seen.push(key.to_owned());
            return Err(Status::unavailable(format!("first call for {key}")));
        }
    }
    Ok(())
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

struct SayHello;

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFut<Result<Response<HelloReply>, Status>>;

    fn call(&mut self, req: Request<HelloRequest>) -> Self::Future {
        Box::pin(async move {
            let name = req.into_inner().name;
            check(&name)?;
            Ok(Response::new(HelloReply {
                message: format!("hello, {name}"),
            }))
        })
    }
}

struct SayHelloStream;

impl tonic::server::ServerStreamingService<HelloRequest> for SayHelloStream {
    type Response = HelloReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFut<Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, req: Request<HelloRequest>) -> Self::Future {
        Box::pin(async move {
            let HelloRequest { name, count } = req.into_inner();
            check(&name)?;
            let count = if count == 0 { 3 } else { count.min(1000) };
            let broken = name.starts_with("break:");
            let replies = (0..count)
                .map(move |i| {
                    Ok(HelloReply {
                        message: format!("hello {i}, {name}"),
                    })
                })
                .chain(broken.then(|| Err(Status::unavailable("stream broke"))));
            let stream: ReplyStream = Box::pin(futures_util::stream::iter(replies));
            Ok(Response::new(stream))
        })
    }
}

/// Serves one gRPC request for `hello.Greeter`; unknown methods get `UNIMPLEMENTED`.
pub async fn serve<B>(req: http::Request<B>) -> http::Response<tonic::body::Body>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send,
    B::Data: Send,
    B: http_body::Body<Data = bytes::Bytes>,
{
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
    match req.uri().path() {
        SAY_HELLO => grpc.unary(SayHello, req).await,
        SAY_HELLO_STREAM => grpc.server_streaming(SayHelloStream, req).await,
        other => Status::unimplemented(format!("no method {other}")).into_http(),
    }
}

/// A `hello.Greeter` client over any tonic channel.
#[derive(Clone, Debug)]
pub struct GreeterClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl GreeterClient {
    /// Connects (HTTP/2, plaintext) to `addr`.
    ///
    /// # Errors
    ///
    /// When the connection cannot be made.
    pub async fn connect(addr: std::net::SocketAddr) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Self {
            inner: tonic::client::Grpc::new(channel),
        })
    }

    /// Calls `SayHello`.
    ///
    /// # Errors
    ///
    /// The status the server (or a proxy) answered with.
    pub async fn say_hello(&mut self, name: &str) -> Result<HelloReply, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let req = Request::new(HelloRequest {
            name: name.to_owned(),
            count: 0,
        });
        let res = self
            .inner
            .unary(
                req,
                PathAndQuery::from_static(SAY_HELLO),
                ProstCodec::<HelloRequest, HelloReply>::default(),
            )
            .await?;
        Ok(res.into_inner())
    }

    /// Calls `SayHelloStream` and collects the replies.
    ///
    /// # Errors
    ///
    /// The status the server (or a proxy) answered with, at the start or mid-stream.
    pub async fn say_hello_stream(
        &mut self,
        name: &str,
        count: u32,
    ) -> Result<Vec<HelloReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let req = Request::new(HelloRequest {
            name: name.to_owned(),
            count,
        });
        let res = self
            .inner
            .server_streaming(
                req,
                PathAndQuery::from_static(SAY_HELLO_STREAM),
                ProstCodec::<HelloRequest, HelloReply>::default(),
            )
            .await?;
        let mut stream = res.into_inner();
        let mut out = Vec::new();
        while let Some(reply) = stream.message().await? {
            out.push(reply);
        }
        Ok(out)
    }
}
