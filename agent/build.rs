//! Records the git commit the binaries are built from (`--version`, `/version`): `git rev-parse`
//! in a checkout, else `NETAGENT_GIT_COMMIT` from the environment (a source tarball's build),
//! else "unknown". Reruns when HEAD moves.
//!
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
    git_commit();
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn git_commit() {
    println!("cargo:rerun-if-env-changed=NETAGENT_GIT_COMMIT");
    let commit = git(&["rev-parse", "--short=12", "HEAD"])
        .or_else(|| std::env::var("NETAGENT_GIT_COMMIT").ok())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=NETAGENT_GIT_COMMIT={commit}");
    // Rebuild when HEAD or the branch it names moves (worktrees keep refs in the common dir).
    if let (Some(dir), Some(common)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) {
        let mut watch = vec![format!("{dir}/HEAD"), format!("{common}/packed-refs")];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{common}/{r}"));
        }
        // A path that does not exist would rerun this script on every build.
        for path in watch.iter().filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
