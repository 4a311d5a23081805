//! A gRPC service for the lab: tonic server and client, each on a thread
//! inside one of the lab's network namespaces. The service is written the
//! way tonic's code generator writes one (no protoc on these machines): a
//! unary method and a bidirectional-streaming one over one message type.

use rauta_testkit::netns::in_netns;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use tokio_stream::StreamExt;
use tonic::codegen::{http, BoxFuture, BoxStream, Context, Poll, Service};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Note {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint32, tag = "2")]
    pub seq: u32,
}

pub const SERVICE: &str = "rauta.test.Echo";
const SAY: &str = "/rauta.test.Echo/Say";
const CHAT: &str = "/rauta.test.Echo/Chat";

/// `Say`: one note back, or `InvalidArgument` when asked to fail.
struct Say;

impl tonic::server::UnaryService<Note> for Say {
    type Response = Note;
    type Future = BoxFuture<tonic::Response<Note>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Note>) -> Self::Future {
        Box::pin(async move {
            let note = request.into_inner();
            if note.text == "fail" {
                return Err(tonic::Status::invalid_argument("asked to fail"));
            }
            let mut response = tonic::Response::new(Note {
                text: format!("echo: {}", note.text),
                seq: note.seq + 1,
            });
            response
                .metadata_mut()
                .insert("x-served-by", "grpc-echo".parse().expect("ascii"));
            Ok(response)
        })
    }
}

/// `Chat`: every note back upper-cased as it arrives; a note "end" ends
/// the call with `Aborted` — a status in trailers after data.
struct Chat;

impl tonic::server::StreamingService<Note> for Chat {
    type Response = Note;
    type ResponseStream = BoxStream<Note>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<Note>>) -> Self::Future {
        Box::pin(async move {
            let replies = request.into_inner().map(|note| {
                let note = note?;
                if note.text == "end" {
                    return Err(tonic::Status::aborted("ended by the client"));
                }
                Ok(Note {
                    text: note.text.to_uppercase(),
                    seq: note.seq,
                })
            });
            let stream: Self::ResponseStream = Box::pin(replies);
            Ok(tonic::Response::new(stream))
        })
    }
}

#[derive(Clone)]
struct EchoService;

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Note, Note>::default());
            Ok(match request.uri().path() {
                SAY => grpc.unary(Say, request).await,
                CHAT => grpc.streaming(Chat, request).await,
                _ => tonic::Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The gRPC server, serving in a namespace until dropped.
pub struct GrpcServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl GrpcServer {
    pub fn start(ns: &str, listen: SocketAddr) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = in_netns(ns, move || {
            runtime().block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .unwrap_or_else(|e| panic!("gRPC server on {listen}: {e}"));
                let _ = ready_tx.send(());
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tonic::transport::Server::builder()
                    .add_service(EchoService)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("gRPC server");
            })
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("gRPC server never listened");
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Call the service at `target` from namespace `ns`: a unary call, a
/// unary call that fails, and a bidirectional stream whose replies must
/// arrive one by one before the next note is sent, ending with a status
/// in trailers. Returns what went wrong, if anything.
pub fn exercise(ns: &str, target: SocketAddr) -> Result<(), String> {
    in_netns(ns, move || runtime().block_on(calls(target)))
        .join()
        .map_err(|_| "gRPC client thread panicked".to_string())?
}

async fn calls(target: SocketAddr) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| e.to_string())?
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let codec = || ProstCodec::<Note, Note>::default();

    grpc.ready().await.map_err(|e| e.to_string())?;
    let request = tonic::Request::new(Note {
        text: "hello".into(),
        seq: 1,
    });
    let response = grpc
        .unary(request, http::uri::PathAndQuery::from_static(SAY), codec())
        .await
        .map_err(|s| format!("unary call: {s:?}"))?;
    if response.metadata().get("x-served-by").map(|v| v.as_bytes()) != Some(b"grpc-echo") {
        return Err(format!("response metadata lost: {:?}", response.metadata()));
    }
    let note = response.into_inner();
    if note.text != "echo: hello" || note.seq != 2 {
        return Err(format!("unary reply {note:?}"));
    }

    grpc.ready().await.map_err(|e| e.to_string())?;
    let request = tonic::Request::new(Note {
        text: "fail".into(),
        seq: 0,
    });
    match grpc
        .unary(request, http::uri::PathAndQuery::from_static(SAY), codec())
        .await
    {
        Err(status)
            if status.code() == tonic::Code::InvalidArgument
                && status.message() == "asked to fail" => {}
        other => return Err(format!("failing unary call gave {other:?}")),
    }

    grpc.ready().await.map_err(|e| e.to_string())?;
    let (notes, rx) = tokio::sync::mpsc::channel(4);
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    let response = grpc
        .streaming(
            tonic::Request::new(outbound),
            http::uri::PathAndQuery::from_static(CHAT),
            codec(),
        )
        .await
        .map_err(|s| format!("streaming call: {s:?}"))?;
    let mut replies = response.into_inner();
    for seq in 0..5 {
        let text = format!("note {seq}");
        notes
            .send(Note {
                text: text.clone(),
                seq,
            })
            .await
            .map_err(|_| "stream closed early".to_string())?;
        let reply = replies
            .message()
            .await
            .map_err(|s| format!("reply {seq}: {s:?}"))?
            .ok_or_else(|| format!("stream ended before reply {seq}"))?;
        if reply.text != text.to_uppercase() || reply.seq != seq {
            return Err(format!("reply {seq}: {reply:?}"));
        }
    }
    notes
        .send(Note {
            text: "end".into(),
            seq: 99,
        })
        .await
        .map_err(|_| "stream closed early".to_string())?;
    drop(notes);
    match replies.message().await {
        Err(status)
            if status.code() == tonic::Code::Aborted
                && status.message() == "ended by the client" =>
        {
            Ok(())
        }
        other => Err(format!(
            "stream end gave {other:?} (status in trailers expected)"
        )),
    }
}
