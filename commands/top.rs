//! `wsgw top`: a live terminal dashboard of one node (`--addr`) or of every registered node
//! (`--etcd`), fed by each node's `WatchStats` stream. One row per node, totals, sparklines of
//! the last minutes; keys to sort, select, and drain or redirect a node after confirmation.
//! Nodes that go away stay on screen as "gone"; nodes that register later are picked up. The
//! terminal is restored on exit and on panic (ratatui's init installs the hook).

mod view;

use std::{
    collections::HashMap,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use wsgw::{
    admin::client::{self, NodeClient},
    protocol::admin_pb::{DrainRequest, NodeStats, RedirectRequest, WatchStatsRequest},
};

use crate::nodes::NodeArgs;
use view::{Action, App, Command};

/// Live dashboard of the cluster's nodes (q quits).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    nodes: NodeArgs,
    /// Refresh interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

enum Event {
    Stats(String, Box<NodeStats>),
    Failed(String, String),
    Key(char),
    Nodes(Vec<NodeClient>),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(top(args))
}

async fn top(args: Args) -> anyhow::Result<ExitCode> {
    let first = match args.nodes.clients().await {
        Ok(nodes) => nodes,
        Err(code) => return Ok(code),
    };
    let (tx, mut rx) = mpsc::channel(1024);
    let stop = CancellationToken::new();
    let interval_ms = args.interval.as_millis().clamp(100, 60_000) as u32;
    let mut clients: HashMap<String, NodeClient> = HashMap::new();
    let _ = tx.send(Event::Nodes(first)).await;
    if args.nodes.whole_cluster() {
        tokio::spawn(rediscover(args.nodes.clone(), tx.clone(), stop.clone()));
    }
    let keys_done = Arc::new(AtomicBool::new(false));
    let keys = std::thread::spawn({
        let (tx, done) = (tx.clone(), keys_done.clone());
        move || read_keys(tx, done)
    });

    let mut terminal = ratatui::init();
    let mut app = App::new();
    let mut tick = tokio::time::interval(args.interval);
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = tick.tick() => {
                app.sample(Instant::now());
                None
            }
        };
        match event {
            Some(Event::Stats(node, stats)) => app.update(&node, *stats, Instant::now()),
            Some(Event::Failed(node, error)) => app.failed(&node, error),
            Some(Event::Nodes(found)) => {
                for node in found {
                    if !clients.contains_key(&node.name) {
                        tokio::spawn(feed(node.clone(), interval_ms, tx.clone(), stop.clone()));
                        clients.insert(node.name.clone(), node);
                    }
                }
            }
            Some(Event::Key(k)) => match app.key(k) {
                Command::Quit => break,
                Command::Run(action) => app.status = perform(&clients, action).await,
                Command::Nothing => {}
            },
            None => {}
        }
        terminal.draw(|f| app.draw(f, Instant::now()))?;
    }
    ratatui::restore();
    stop.cancel();
    keys_done.store(true, Ordering::Relaxed);
    let _ = keys.join();
    Ok(ExitCode::SUCCESS)
}

/// Streams one node's stats into the event channel, reconnecting until `stop`.
async fn feed(
    node: NodeClient,
    interval_ms: u32,
    tx: mpsc::Sender<Event>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let mut client = node.client.clone();
        let request = node.request(WatchStatsRequest { interval_ms });
        let error = match client.watch_stats(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let item = tokio::select! {
                        _ = stop.cancelled() => return,
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok(stats)) => {
                            let _ = tx.send(Event::Stats(node.name.clone(), Box::new(stats))).await;
                        }
                        Some(Err(s)) => break s.message().to_owned(),
                        None => break "stream ended".to_owned(),
                    }
                }
            }
            Err(s) => s.message().to_owned(),
        };
        let _ = tx.send(Event::Failed(node.name.clone(), error)).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Re-reads the registry every few seconds, so new nodes appear.
async fn rediscover(nodes: NodeArgs, tx: mpsc::Sender<Event>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let (Ok(token), Ok(tls), Ok(target)) = (nodes.token(), nodes.to.tls(), nodes.target())
        else {
            continue;
        };
        if let Ok(found) = client::nodes(&target, &token, &tls).await {
            let _ = tx.send(Event::Nodes(found)).await;
        }
    }
}

/// Reads keys on a plain thread (crossterm's reader blocks) until `done`.
fn read_keys(tx: mpsc::Sender<Event>, done: Arc<AtomicBool>) {
    while !done.load(Ordering::Relaxed) {
        if !event::poll(Duration::from_millis(100)).unwrap_or(false) {
            continue;
        }
        let Ok(TermEvent::Key(key)) = event::read() else { continue };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let c = match key.code {
            KeyCode::Char(c) => c,
            KeyCode::Up => 'k',
            KeyCode::Down => 'j',
            KeyCode::Esc => 'q',
            _ => continue,
        };
        if tx.blocking_send(Event::Key(c)).is_err() {
            return;
        }
    }
}

/// Runs a confirmed action; returns the status line.
async fn perform(clients: &HashMap<String, NodeClient>, action: Action) -> String {
    let (Action::Drain(name) | Action::Redirect(name)) = &action;
    let Some(node) = clients.get(name) else { return format!("{name}: unknown node") };
    let mut client = node.client.clone();
    match action {
        Action::Drain(_) => match client.drain(node.request(DrainRequest {})).await {
            Ok(_) => format!("{name}: draining"),
            Err(s) => format!("{name}: drain failed: {}", s.message()),
        },
        Action::Redirect(_) => {
            let req = RedirectRequest { fraction: 0.5, count: 0 };
            match client.redirect(node.request(req)).await {
                Ok(r) => format!("{name}: redirected {} connection(s)", r.into_inner().redirected),
                Err(s) => format!("{name}: redirect failed: {}", s.message()),
            }
        }
    }
}
