//! gRPC over TLS with certificates made at test time (a CA, a server certificate for localhost
//! and 127.0.0.1, a client certificate): the node's port with mutual TLS for `wsgw push` and
//! `wsgw sessions`, backends called over TLS, and two cluster nodes delivering to each other
//! over mutual TLS.

use std::path::Path;

use bytes::Bytes;
use wsgw::{
    grpc::GrpcAddr,
    protocol::{CommandType, Message, Serializer},
};

use crate::support::{Pki, TestBackend, TestNode, cluster::Scope, run_wsgw};

const JSON: Serializer = Serializer::Json;

/// `server.grpc.tls` with the server certificate, and mutual TLS with the test CA.
fn mutual(pki: &Pki) -> impl Fn(&mut wsgw::config::Config) + Clone + use<> {
    let (cert, key, ca) = (pki.path("server.pem"), pki.path("server.key"), pki.path("ca.pem"));
    move |c| {
        c.server.grpc.tls.cert = Some(cert.clone());
        c.server.grpc.tls.key = Some(key.clone());
        c.server.grpc.tls.client_ca = Some(ca.clone());
    }
}

/// `wsgw ARGS… --tls-ca … [--tls-cert … --tls-key …]`: (exit code, stdout, stderr).
async fn wsgw_tls(pki: &Pki, client_cert: bool, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--tls-ca".into(), pki.arg("ca.pem")]);
    if client_cert {
        all.extend([
            "--tls-cert".into(),
            pki.arg("client.pem"),
            "--tls-key".into(),
            pki.arg("client.key"),
        ]);
    }
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    run_wsgw(&refs).await
}

#[tokio::test]
async fn the_grpc_port_serves_mutual_tls_to_the_operator_commands() {
    let pki = Pki::new();
    let node = TestNode::builder().config(mutual(&pki)).spawn().await;
    let mut client = node.connect(5, 9).await;
    let https = format!("https://localhost:{}", node.grpc_addr.port());
    let push = ["push", "--addr", &https, "--user", "5", "--biz", "9", "--key", "over-tls", "hi"];

    let (code, out, err) = wsgw_tls(&pki, true, &push).await;
    assert_eq!(code, 0, "{out}{err}");
    let m = client.recv_msg(JSON).await;
    assert_eq!((m.cmd, m.key.as_str()), (CommandType::DownstreamMessage as i32, "over-tls"));

    let sessions = ["sessions", "--addr", &https, "--user", "5", "--biz", "9", "--json"];
    let (code, out, err) = wsgw_tls(&pki, true, &sessions).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"userId\":\"5\""), "{out}");

    let (code, _, err) = wsgw_tls(&pki, false, &push).await;
    assert_eq!(code, 2, "no client certificate: refused ({err})");
    let plain = format!("127.0.0.1:{}", node.grpc_addr.port());
    let (code, _, err) =
        run_wsgw(&["push", "--addr", &plain, "--user", "5", "--biz", "9", "x"]).await;
    assert_eq!(code, 2, "plain HTTP/2 on the TLS port: refused ({err})");
    let untrusted = [
        "push",
        "--addr",
        &https,
        "--user",
        "5",
        "--biz",
        "9",
        "--tls-ca",
        &pki.arg("other-ca.pem"),
        "x",
    ];
    let (code, _, err) = run_wsgw(&untrusted).await;
    assert_eq!(code, 2, "a server certificate from an unknown CA: refused ({err})");
}

fn upstream(key: &str) -> Message {
    Message {
        cmd: CommandType::UpstreamMessage.into(),
        key: key.into(),
        body: Bytes::from_static(b"x"),
    }
}

#[tokio::test]
async fn backends_with_https_endpoints_are_called_over_tls() {
    let pki = Pki::new();
    let read = |name: &str| std::fs::read(pki.path(name)).expect("read");
    let identity = tonic::transport::Identity::from_pem(read("server.pem"), read("server.key"));
    let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    let backend = TestBackend::spawn_tls(9, tls).await;
    let https =
        GrpcAddr::parse(&format!("https://localhost:{}", backend.addr.port())).expect("addr");
    let node_with = |ca: &Path| {
        let (https, ca) = (https.clone(), ca.to_owned());
        TestNode::with_backend(9, backend.addr).config(move |c| {
            c.backends[0].endpoints = vec![https];
            c.upstream.tls.ca = Some(ca);
            c.upstream.retries = 0;
        })
    };

    let node = node_with(&pki.path("ca.pem")).spawn().await;
    let mut client = node.connect(1, 9).await;
    client.send(&upstream("tls-1"), JSON).await;
    let ack = client.recv_msg(JSON).await;
    assert_eq!((ack.cmd, ack.key.as_str()), (CommandType::UpstreamAck as i32, "tls-1"), "{ack:?}");
    assert_eq!(backend.calls() + backend.batch_calls(), 1);

    let wrong = node_with(&pki.path("other-ca.pem")).spawn().await;
    let mut client = wrong.connect(2, 9).await;
    client.send(&upstream("tls-2"), JSON).await;
    let answer = client.recv_msg(JSON).await;
    assert_eq!(
        answer.cmd,
        CommandType::Error as i32,
        "an untrusted backend is never called: {answer:?}"
    );
    assert_eq!(backend.calls() + backend.batch_calls(), 1);
}

#[tokio::test]
async fn cluster_nodes_deliver_to_each_other_over_mutual_tls() {
    let pki = Pki::new();
    let scope = Scope::new("grpc-tls");
    let a = scope.node("a").config(mutual(&pki)).spawn().await;
    let b = scope.node("b").config(mutual(&pki)).spawn().await;
    let mut on_b = b.connect(21, 9).await;
    let https_a = format!("https://127.0.0.1:{}", a.grpc_addr.port());
    let sessions = ["sessions", "--addr", &https_a, "--user", "21", "--biz", "9", "--json"];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let listed = wsgw_tls(&pki, true, &sessions).await.1;
        if listed.contains("\"nodeId\":\"") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node a never saw the session: {listed}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The push enters at a; a hands it to b over mutual TLS (b's registered https:// address).
    let push =
        ["push", "--addr", &https_a, "--user", "21", "--biz", "9", "--key", "via-a", "hello"];
    let (code, out, err) = wsgw_tls(&pki, true, &push).await;
    assert_eq!(code, 0, "{out}{err}");
    let m = on_b.recv_msg(JSON).await;
    assert_eq!((m.cmd, m.key.as_str()), (CommandType::DownstreamMessage as i32, "via-a"), "{m:?}");
}
