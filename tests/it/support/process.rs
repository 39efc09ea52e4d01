//! A gateway node in its own `wsgw serve` process, for the tests that kill it with SIGKILL.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use tokio::process::Child;

use super::{
    free_port,
    node::{Builder, Endpoints},
    wsgw,
};

/// A `wsgw serve` process; killed (SIGKILL) when dropped.
pub struct ProcessNode {
    pub at: Endpoints,
    child: Child,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for ProcessNode {
    type Target = Endpoints;

    fn deref(&self) -> &Endpoints {
        &self.at
    }
}

impl Builder {
    /// Runs this node's config in a `wsgw serve` process on fresh loopback ports; returns when
    /// its governor answers.
    pub async fn spawn_process(self) -> ProcessNode {
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        let at = Endpoints { ws_addr: port(), governor_addr: port(), grpc_addr: port() };
        let mut config = self.into_config();
        config.server.websocket.listen = Some(at.ws_addr);
        config.server.governor.listen = at.governor_addr;
        config.server.grpc.listen = at.grpc_addr;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("wsgw.yaml");
        std::fs::write(&path, serde_yaml_ng::to_string(&config).expect("yaml")).expect("write");
        let log = std::fs::File::create(dir.path().join("wsgw.log")).expect("log");
        let child = tokio::process::Command::from(wsgw())
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start wsgw serve");
        let node = ProcessNode { at, child, _dir: dir };
        let url = format!("http://{}/health", at.governor_addr);
        crate::assert_within!(
            20,
            super::http_get(&url).await.is_ok_and(|r| r.status() == 200),
            "wsgw serve did not come up"
        );
        node
    }
}

impl ProcessNode {
    /// Kills the process with SIGKILL (no drain, no goodbye) and waits for it.
    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("wsgw.log")).unwrap_or_default()
    }
}
