//! Generates the gRPC services of the cluster port (2377) with tonic-build's manual builder: no
//! .proto files and no protoc. Messages are Rust types (src/rpc/messages.rs) carried as JSON by
//! `crate::rpc::codec::JsonCodec`.

use tonic_build::manual::{Builder, Method, Service};

const CODEC: &str = "crate::rpc::codec::JsonCodec";

fn unary(name: &str, route: &str, input: &str, output: &str) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("crate::rpc::messages::{input}"))
        .output_type(format!("crate::rpc::messages::{output}"))
        .codec_path(CODEC)
        .build()
}

fn main() {
    let ca = Service::builder()
        .name("Ca")
        .package("netagent")
        .method(unary("join", "Join", "JoinRequest", "JoinResponse"))
        .method(unary("renew", "Renew", "RenewRequest", "RenewResponse"))
        .build();
    let raft = Service::builder()
        .name("Raft")
        .package("netagent")
        .method(unary(
            "append_entries",
            "AppendEntries",
            "AppendRequest",
            "AppendReply",
        ))
        .method(unary("vote", "Vote", "VoteRequest", "VoteReply"))
        .method(unary(
            "install_snapshot",
            "InstallSnapshot",
            "SnapshotRequest",
            "SnapshotReply",
        ))
        .build();
    let control = Service::builder()
        .name("Control")
        .package("netagent")
        .method(unary(
            "forward",
            "Forward",
            "ForwardRequest",
            "ForwardResponse",
        ))
        .method(unary(
            "propose",
            "Propose",
            "ProposeRequest",
            "ProposeReply",
        ))
        .method(unary(
            "join_raft",
            "JoinRaft",
            "JoinRaftRequest",
            "JoinRaftReply",
        ))
        .method(unary("ping", "Ping", "PingRequest", "PingReply"))
        .build();
    let dispatcher = Service::builder()
        .name("Dispatcher")
        .package("netagent")
        .method(
            Method::builder()
                .name("session")
                .route_name("Session")
                .input_type("crate::rpc::messages::SessionUp")
                .output_type("crate::rpc::messages::SessionDown")
                .codec_path(CODEC)
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    Builder::new().compile(&[ca, raft, control, dispatcher]);
    println!("cargo:rerun-if-changed=build.rs");
}
