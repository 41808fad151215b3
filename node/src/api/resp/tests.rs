//! The RESP interface over real sockets: pipelining, protocol errors, shutdown, and a
//! real client library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::serve;
use crate::db::{Db, Limits};
use crate::metrics::Metrics;
use crate::state::{NodeInfo, NodeState};
use crate::store::{Origin, OriginTable, Store, StoreConfig};

struct Server {
    addr: SocketAddr,
    state: Arc<NodeState>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn start(limits: Limits) -> Server {
    let origins = Arc::new(OriginTable::new(Origin { node_id: "eu-0".into(), region: "eu".into() }));
    let db = Db::standalone(Store::new(StoreConfig::default(), origins), limits, Arc::new(Metrics::default()));
    let state = Arc::new(NodeState::standalone(db, NodeInfo { node_id: "eu-0".into(), region: "eu".into() }, None));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, state.clone(), rx));
    Server { addr, state, shutdown, task }
}

impl Server {
    fn metric(&self, name: &str) -> String {
        let rendered = self.state.db.metrics().render(&Default::default());
        let prefix = format!("{name} ");
        rendered.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_default().to_string()
    }
}

/// Reads until `expected.len()` bytes arrived (or the peer closed, or 5 s passed).
async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < len {
        let mut buf = vec![0u8; 64 * 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
    got
}

/// True when the peer closed the connection (within 5 s).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

async fn exchange(stream: &mut TcpStream, request: &[u8], expected: &[u8]) {
    stream.write_all(request).await.unwrap();
    let got = read_exactly(stream, expected.len()).await;
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(expected));
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order_in_one_go() {
    let server = start(Limits::default()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut request = Vec::new();
    super::codec::encode_command(&["SET", "a", "1"], &mut request);
    super::codec::encode_command(&["GET", "a"], &mut request);
    request.extend_from_slice(b"PING\r\nEXISTS a a\r\n");
    super::codec::encode_command(&["NOPE"], &mut request);
    super::codec::encode_command(&["GET", "a"], &mut request);
    let expected =
        b"+OK\r\n$1\r\n1\r\n+PONG\r\n:2\r\n-ERR unknown command 'NOPE', with args beginning with: \r\n$1\r\n1\r\n";
    exchange(&mut s, &request, expected).await;
    // An error does not close the connection.
    exchange(&mut s, b"PING\r\n", b"+PONG\r\n").await;
}

#[tokio::test]
async fn a_command_split_across_many_writes_is_answered_once_complete() {
    let server = start(Limits::default()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let value = vec![b'v'; 300 * 1024];
    let mut request = Vec::new();
    super::codec::encode_command(&[&b"SET"[..], b"big", &value], &mut request);
    for piece in request.chunks(7 * 1024) {
        s.write_all(piece).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(read_exactly(&mut s, 5).await, b"+OK\r\n");
    s.write_all(b"GET big\r\n").await.unwrap();
    let reply = read_exactly(&mut s, value.len() + 11).await;
    assert_eq!(reply.len(), value.len() + 11);
    assert!(reply.starts_with(b"$307200\r\nvvv"));
    assert!(reply.ends_with(b"v\r\n"));
}

#[tokio::test]
async fn a_protocol_error_is_answered_and_closes_the_connection() {
    let server = start(Limits::default()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    exchange(&mut s, b"PING\r\n*1\r\n$-5\r\nPING\r\n", b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n").await;
    assert!(closed(&mut s).await);
    assert_eq!(server.metric("geocache_resp_protocol_errors_total"), "1");
}

#[tokio::test]
async fn a_bulk_larger_than_the_value_limit_plus_slack_is_a_protocol_error() {
    let server = start(Limits { max_key_bytes: 100, max_value_bytes: 1000 }).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let too_big = 1000 + 64 * 1024 + 1;
    let request = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${too_big}\r\n");
    exchange(&mut s, request.as_bytes(), b"-ERR Protocol error: invalid bulk length\r\n").await;
    assert!(closed(&mut s).await);
    // Within the slack, the command is refused but the connection stays.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut request = Vec::new();
    super::codec::encode_command(&[&b"SET"[..], b"k", &[b'x'; 1001]], &mut request);
    exchange(&mut s, &request, b"-ERR value is 1001 bytes, the limit is 1000\r\n").await;
    exchange(&mut s, b"PING\r\n", b"+PONG\r\n").await;
}

#[tokio::test]
async fn random_bytes_never_take_the_server_down() {
    let server = start(Limits::default()).await;
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let garbage: Vec<u8> = (0..rng.usize(1..4096)).map(|_| rng.u8(..)).collect();
        let _ = s.write_all(&garbage).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    exchange(&mut s, b"PING\r\n", b"+PONG\r\n").await;
}

#[tokio::test]
async fn quit_answers_ok_and_closes_without_running_later_commands() {
    let server = start(Limits::default()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    exchange(&mut s, b"QUIT\r\nSET k v\r\n", b"+OK\r\n").await;
    assert!(closed(&mut s).await);
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    exchange(&mut s, b"EXISTS k\r\n", b":0\r\n").await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_idle_connections() {
    let mut server = start(Limits::default()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    exchange(&mut s, b"PING\r\n", b"+PONG\r\n").await;
    assert_eq!(server.metric("geocache_resp_connections"), "1");
    server.shutdown.send(true).unwrap();
    assert!(closed(&mut s).await);
    tokio::time::timeout(Duration::from_secs(5), &mut server.task).await.expect("serve returns").unwrap();
    assert_eq!(server.metric("geocache_resp_connections"), "0");
    assert_eq!(server.metric("geocache_resp_connections_total"), "1");
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn a_real_client_library_works_over_resp2_and_resp3() {
    let server = start(Limits::default()).await;
    for url in [format!("redis://{}/", server.addr), format!("redis://{}/?protocol=resp3", server.addr)] {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let () = redis::cmd("SET").arg("k").arg("hello").arg("EX").arg(100).query_async(&mut con).await.unwrap();
        let got: Option<String> = redis::cmd("GET").arg("k").query_async(&mut con).await.unwrap();
        assert_eq!(got.as_deref(), Some("hello"));
        let missing: Option<String> = redis::cmd("GET").arg("missing").query_async(&mut con).await.unwrap();
        assert_eq!(missing, None);
        let ttl: i64 = redis::cmd("TTL").arg("k").query_async(&mut con).await.unwrap();
        assert_eq!(ttl, 100);
        let mut pipe = redis::pipe();
        for i in 0..100 {
            pipe.cmd("SET").arg(format!("p{i}")).arg(i).ignore();
        }
        pipe.cmd("MGET").arg("p0").arg("p99").arg("nope");
        let (values,): (Vec<Option<i64>>,) = pipe.query_async(&mut con).await.unwrap();
        assert_eq!(values, vec![Some(0), Some(99), None]);
        let doc: String = redis::cmd("JSON.GET").arg("p7").arg("$").query_async(&mut con).await.unwrap();
        assert_eq!(doc, "[7]");
        let err = redis::cmd("SET").arg("k").query_async::<()>(&mut con).await.unwrap_err();
        assert!(err.to_string().contains("wrong number of arguments for 'set' command"), "{err}");
    }
}
