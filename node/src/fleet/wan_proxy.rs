//! A userspace WAN emulator: a TCP proxy that delays the bytes of every connection in
//! both directions and can cut or blackhole its link on command. The local fleet
//! (`geocache-node fleet`) puts one between every ordered pair of regions, and the
//! multi-region tests drive it to inject partitions (the machines have no netem).
//!
//! - Each accepted connection is forwarded to one upstream, round-robin over the
//!   upstreams that accept (like a load balancer in front of a region).
//!   [`WanProxyHandle::set_upstreams`] replaces the upstreams at runtime (for the
//!   connections accepted from then on); with no upstream at all, connections are
//!   closed as soon as they are accepted (counted in [`WanProxyStats::no_upstream`]).
//! - Every chunk read is stamped with `read time + one-way delay` and written no
//!   earlier than that, in order. Reading and writing run concurrently, so the delay
//!   never accumulates and throughput is not limited (up to [`MAX_IN_FLIGHT_BYTES`]
//!   in flight per direction).
//! - [`WanProxyHandle::cut`] closes every open connection and closes new ones as soon
//!   as they are accepted (the peer sees an immediate EOF), like a link that resets.
//! - [`WanProxyHandle::blackhole`] freezes the link instead: open connections stay
//!   open but nothing passes in either direction, and new connections are accepted but
//!   not forwarded — what a silent WAN partition looks like to TCP. After
//!   [`WanProxyHandle::heal`] the frozen bytes flow again, in order.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use geocache_node::fleet::wan_proxy::WanProxy;
//! let upstream = "127.0.0.1:7946".parse().unwrap();
//! let proxy = WanProxy::spawn("127.0.0.1:0".parse().unwrap(), vec![upstream], Duration::from_millis(40))?;
//! println!("dial {} to reach {upstream} 40 ms away", proxy.addr());
//! proxy.cut();
//! proxy.heal();
//! proxy.shutdown();
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

/// How long the proxy tries one upstream before it moves on to the next.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read but not yet delivered, per direction of a connection, before the proxy
/// stops reading (back-pressure). 32 MiB in flight covers 800 MB/s at a 40 ms delay.
pub const MAX_IN_FLIGHT_BYTES: usize = 32 << 20;
/// Largest chunk read at once.
const CHUNK_BYTES: usize = 64 << 10;

/// What the link currently does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Bytes flow, delayed by the one-way delay.
    Up,
    /// Open connections are closed; new ones are closed as soon as they are accepted.
    Cut,
    /// Nothing flows; open and new connections hang until the link heals.
    Blackholed,
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkState::Up => "up",
            LinkState::Cut => "cut",
            LinkState::Blackholed => "blackholed",
        })
    }
}

/// The link state plus the proxy's own shutdown, as seen by its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Link(LinkState),
    Shutdown,
}

impl Control {
    /// Whether open connections must be closed.
    fn closes(self) -> bool {
        matches!(self, Control::Link(LinkState::Cut) | Control::Shutdown)
    }
    fn frozen(self) -> bool {
        self == Control::Link(LinkState::Blackholed)
    }
}

/// Counters of one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WanProxyStats {
    /// Connections accepted (including the ones closed at once while cut).
    pub accepted: u64,
    /// Connections forwarded to an upstream.
    pub forwarded: u64,
    /// Connections closed because no upstream accepted them (or there was none).
    pub no_upstream: u64,
    /// Connections closed because the link was cut.
    pub closed_by_cut: u64,
    /// Connections open right now.
    pub open: u64,
    /// Bytes delivered, both directions together.
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    forwarded: AtomicU64,
    no_upstream: AtomicU64,
    closed_by_cut: AtomicU64,
    open: AtomicU64,
    bytes: AtomicU64,
}

struct Shared {
    /// Replaced as a whole by [`WanProxyHandle::set_upstreams`]; a connection works on
    /// the snapshot it took.
    upstreams: RwLock<Arc<[SocketAddr]>>,
    next_upstream: AtomicUsize,
    /// The one-way delay in nanoseconds.
    delay_ns: AtomicU64,
    control: watch::Sender<Control>,
    counters: Counters,
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed))
    }

    fn upstreams(&self) -> Arc<[SocketAddr]> {
        self.upstreams.read().clone()
    }
}

/// Starts WAN proxies; see the [module documentation](self).
pub struct WanProxy;

impl WanProxy {
    /// Listens on `listen` (port 0 picks a free port; see [`WanProxyHandle::addr`])
    /// and forwards every connection to one of `upstreams` with `one_way_delay` on
    /// the bytes of both directions. `upstreams` may be empty (connections are then
    /// closed at once until [`WanProxyHandle::set_upstreams`] gives some). Must be
    /// called within a Tokio runtime, whose tasks then run the proxy until
    /// [`WanProxyHandle::shutdown`] or until the handle is dropped.
    pub fn spawn(
        listen: SocketAddr,
        upstreams: Vec<SocketAddr>,
        one_way_delay: Duration,
    ) -> io::Result<WanProxyHandle> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("a wan proxy must be started within a tokio runtime"))?;
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let (control, _) = watch::channel(Control::Link(LinkState::Up));
        let shared = Arc::new(Shared {
            upstreams: RwLock::new(upstreams.into()),
            next_upstream: AtomicUsize::new(0),
            delay_ns: AtomicU64::new(duration_ns(one_way_delay)),
            control,
            counters: Counters::default(),
        });
        tracing::debug!(%addr, upstreams = ?shared.upstreams(), delay = ?one_way_delay, "wan proxy listening");
        runtime.spawn(accept_loop(listener, shared.clone()));
        Ok(WanProxyHandle { addr, shared })
    }
}

/// Controls a running [`WanProxy`]. Dropping it shuts the proxy down.
pub struct WanProxyHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WanProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WanProxyHandle")
            .field("addr", &self.addr)
            .field("upstreams", &self.shared.upstreams())
            .field("delay", &self.shared.delay())
            .field("state", &self.state())
            .finish()
    }
}

impl WanProxyHandle {
    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The addresses connections are forwarded to.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.shared.upstreams().to_vec()
    }

    /// Replaces the addresses new connections are forwarded to (open connections keep
    /// their upstream). An empty list makes the proxy close new connections at once.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        tracing::debug!(addr = %self.addr, ?upstreams, "wan proxy upstreams changed");
        *self.shared.upstreams.write() = upstreams.into();
    }

    /// The current one-way delay.
    pub fn delay(&self) -> Duration {
        self.shared.delay()
    }

    /// Changes the one-way delay of the bytes read from now on (bytes already in
    /// flight keep theirs; order is preserved either way).
    pub fn set_delay(&self, one_way_delay: Duration) {
        self.shared.delay_ns.store(duration_ns(one_way_delay), Ordering::Relaxed);
        tracing::debug!(addr = %self.addr, delay = ?one_way_delay, "wan proxy delay changed");
    }

    /// The link state; `None` once the proxy is shut down.
    pub fn state(&self) -> Option<LinkState> {
        match *self.shared.control.borrow() {
            Control::Link(state) => Some(state),
            Control::Shutdown => None,
        }
    }

    /// Closes every open connection and closes new ones as soon as they are accepted.
    pub fn cut(&self) {
        self.set_state(LinkState::Cut);
    }

    /// Freezes the link: nothing passes, but connections stay open (and new ones are
    /// accepted) until [`heal`](Self::heal) or [`cut`](Self::cut).
    pub fn blackhole(&self) {
        self.set_state(LinkState::Blackholed);
    }

    /// Lets bytes and new connections through again.
    pub fn heal(&self) {
        self.set_state(LinkState::Up);
    }

    fn set_state(&self, state: LinkState) {
        let changed = self.shared.control.send_if_modified(|current| {
            if *current == Control::Shutdown || *current == Control::Link(state) {
                return false;
            }
            *current = Control::Link(state);
            true
        });
        if changed {
            tracing::debug!(addr = %self.addr, ?state, "wan proxy link state changed");
        }
    }

    /// Stops listening and closes every connection. Idempotent; also done on drop.
    pub fn shutdown(&self) {
        self.shared.control.send_replace(Control::Shutdown);
    }

    /// Counters since the proxy started.
    pub fn stats(&self) -> WanProxyStats {
        let c = &self.shared.counters;
        WanProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            no_upstream: c.no_upstream.load(Ordering::Relaxed),
            closed_by_cut: c.closed_by_cut.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for WanProxyHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut control = shared.control.subscribe();
    let addr = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = control.wait_for(|c| *c == Control::Shutdown) => {
                let _ = changed;
                break;
            }
        };
        match accepted {
            Ok((socket, from)) => {
                shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                let now = *control.borrow();
                match now {
                    Control::Shutdown => break,
                    Control::Link(LinkState::Cut) => {
                        shared.counters.closed_by_cut.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(?addr, %from, "wan proxy link is cut; connection closed");
                        drop(socket);
                    }
                    Control::Link(_) => {
                        tokio::spawn(connection(socket, from, shared.clone()));
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(?addr, error = %e, "wan proxy cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!(?addr, "wan proxy stopped");
}

/// Decrements the open-connection gauge when a connection task ends, however it ends.
struct OpenGuard<'a>(&'a Counters);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a connection ended early.
enum Ended {
    Closed,
    Io(io::Error),
}

async fn connection(client: TcpStream, from: SocketAddr, shared: Arc<Shared>) {
    shared.counters.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(&shared.counters);
    let mut control = shared.control.subscribe();
    // While blackholed, the connection is accepted (the kernel did that already) but
    // not forwarded; it goes on only if the link heals.
    let Ok(state) = control.wait_for(|c| !c.frozen()).await.map(|c| *c) else { return };
    if state.closes() {
        shared.counters.closed_by_cut.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let upstream = tokio::select! {
        upstream = connect_upstream(&shared) => upstream,
        _ = control.wait_for(|c| c.closes()) => {
            shared.counters.closed_by_cut.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let Some((upstream, to)) = upstream else {
        shared.counters.no_upstream.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%from, upstreams = ?shared.upstreams(), "wan proxy found no upstream that accepts; connection closed");
        return;
    };
    shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tracing::trace!(%from, %to, "wan proxy connection forwarded");
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let both = async {
        tokio::try_join!(
            direction(client_read, upstream_write, &shared),
            direction(upstream_read, client_write, &shared),
        )
    };
    let ended = tokio::select! {
        result = both => result.err(),
        _ = control.wait_for(|c| c.closes()) => Some(Ended::Closed),
    };
    match ended {
        None => tracing::trace!(%from, %to, "wan proxy connection finished"),
        Some(Ended::Closed) => {
            shared.counters.closed_by_cut.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, %to, "wan proxy link cut; connection closed");
        }
        Some(Ended::Io(e)) => tracing::trace!(%from, %to, error = %e, "wan proxy connection ended"),
    }
    // Dropping the halves closes both sockets.
}

/// Connects to the next upstream that accepts, round-robin.
async fn connect_upstream(shared: &Shared) -> Option<(TcpStream, SocketAddr)> {
    let upstreams = shared.upstreams();
    let n = upstreams.len();
    if n == 0 {
        return None;
    }
    let start = shared.next_upstream.fetch_add(1, Ordering::Relaxed);
    for i in 0..n {
        let to = upstreams[(start + i) % n];
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(to)).await {
            Ok(Ok(stream)) => return Some((stream, to)),
            Ok(Err(e)) => tracing::trace!(%to, error = %e, "wan proxy upstream refused"),
            Err(_) => tracing::trace!(%to, "wan proxy upstream did not answer in time"),
        }
    }
    None
}

/// A chunk read from one side, to be delivered to the other at `at`.
struct Chunk {
    at: Instant,
    /// Empty means end of stream (the reader saw EOF).
    bytes: Bytes,
}

/// Pumps one direction: a reader that stamps chunks and a writer that delivers them
/// at their time, running concurrently. Ends after delivering the reader's EOF.
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared) -> Result<(), Ended> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Chunk>();
    let budget = Semaphore::new(MAX_IN_FLIGHT_BYTES);
    let reader = async {
        let mut control = shared.control.subscribe();
        let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
        let mut last_at = Instant::now();
        loop {
            // A frozen link does not read either, so the sender's buffers fill up as
            // they would behind a silent partition.
            let state = control.wait_for(|c| !c.frozen()).await.map(|c| *c).map_err(|_| Ended::Closed)?;
            if state.closes() {
                return Err(Ended::Closed);
            }
            buf.reserve(CHUNK_BYTES);
            let n = from.read_buf(&mut buf).await.map_err(Ended::Io)?;
            // Never earlier than the previous chunk, so that a shorter delay set
            // mid-stream cannot reorder bytes.
            let at = (Instant::now() + shared.delay()).max(last_at);
            last_at = at;
            if n == 0 {
                let _ = tx.send(Chunk { at, bytes: Bytes::new() });
                return Ok(());
            }
            let permits = u32::try_from(n).unwrap_or(u32::MAX);
            budget.acquire_many(permits).await.map_err(|_| Ended::Closed)?.forget();
            if tx.send(Chunk { at, bytes: buf.split().freeze() }).is_err() {
                return Err(Ended::Closed);
            }
        }
    };
    let writer = async {
        let mut control = shared.control.subscribe();
        while let Some(chunk) = rx.recv().await {
            tokio::time::sleep_until(chunk.at).await;
            let state = control.wait_for(|c| !c.frozen()).await.map(|c| *c).map_err(|_| Ended::Closed)?;
            if state.closes() {
                return Err(Ended::Closed);
            }
            if chunk.bytes.is_empty() {
                // Pass the half-close on; the other direction may still be busy.
                let _ = to.shutdown().await;
                return Ok(());
            }
            to.write_all(&chunk.bytes).await.map_err(Ended::Io)?;
            shared.counters.bytes.fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
            budget.add_permits(chunk.bytes.len());
        }
        Ok(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    /// An upstream that echoes every byte back, on a fresh loopback port.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// An upstream that writes its name to every connection and keeps it open.
    async fn named_server(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(name.as_bytes()).await;
                    let mut sink = [0u8; 64];
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        addr
    }

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Duration {
        let started = StdInstant::now();
        stream.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
        started.elapsed()
    }

    /// Reads until EOF or a reset; panics unless that happens within 5 s.
    async fn expect_closed(stream: &mut TcpStream) {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection was not closed within 5 s");
    }

    #[tokio::test]
    async fn a_round_trip_takes_at_least_twice_the_one_way_delay() {
        let upstream = echo_server().await;
        let delay = Duration::from_millis(60);
        let proxy = WanProxy::spawn(local(), vec![upstream], delay).unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.set_nodelay(true).unwrap();
        for _ in 0..3 {
            let rtt = round_trip(&mut s, b"ping").await;
            assert!(rtt >= 2 * delay, "round trip {rtt:?} is shorter than twice the delay {delay:?}");
        }
        proxy.set_delay(Duration::from_millis(100));
        let rtt = round_trip(&mut s, b"after the change").await;
        assert!(rtt >= Duration::from_millis(200), "round trip {rtt:?} ignores the new delay");
        assert_eq!(proxy.stats().forwarded, 1);
        assert!(proxy.stats().bytes >= 2 * (3 * 4 + 16));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_arrive_complete_and_in_order_under_load_and_delay_changes() {
        let upstream = echo_server().await;
        let proxy = Arc::new(WanProxy::spawn(local(), vec![upstream], Duration::from_millis(20)).unwrap());
        let mut clients = Vec::new();
        for c in 0..4u8 {
            let addr = proxy.addr();
            clients.push(tokio::spawn(async move {
                let total: usize = 4 << 20;
                let data: Vec<u8> =
                    (0..total).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(c as u32) as u8).collect();
                let s = TcpStream::connect(addr).await.unwrap();
                let (mut r, mut w) = s.into_split();
                let to_send = data.clone();
                let writer = tokio::spawn(async move {
                    let mut pos = 0;
                    let mut size = 1usize;
                    while pos < to_send.len() {
                        // Writes of very different sizes, from 1 byte to 200 KiB.
                        size = (size * 7 + 13) % (200 << 10) + 1;
                        let end = (pos + size).min(to_send.len());
                        w.write_all(&to_send[pos..end]).await.unwrap();
                        pos = end;
                    }
                    w.shutdown().await.unwrap();
                });
                let mut back = Vec::with_capacity(total);
                r.read_to_end(&mut back).await.unwrap();
                writer.await.unwrap();
                assert_eq!(back.len(), data.len(), "client {c}: lost or extra bytes");
                assert!(back == data, "client {c}: bytes reordered or corrupted");
            }));
        }
        // Shorten and lengthen the delay while the streams run.
        for d in [0u64, 50, 1, 30, 0] {
            tokio::time::sleep(Duration::from_millis(15)).await;
            proxy.set_delay(Duration::from_millis(d));
        }
        for c in clients {
            tokio::time::timeout(Duration::from_secs(60), c).await.expect("the streams finish").unwrap();
        }
        assert_eq!(proxy.stats().bytes, 2 * 4 * (4 << 20));
    }

    #[tokio::test]
    async fn cut_closes_open_connections_and_new_ones_until_healed() {
        let upstream = echo_server().await;
        let proxy = WanProxy::spawn(local(), vec![upstream], Duration::from_millis(5)).unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut open, b"hello").await;

        proxy.cut();
        assert_eq!(proxy.state(), Some(LinkState::Cut));
        expect_closed(&mut open).await;
        // A new connection is accepted and closed at once, before any byte passes.
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        let _ = fresh.write_all(b"anyone?").await;
        expect_closed(&mut fresh).await;
        assert!(proxy.stats().closed_by_cut >= 2, "{:?}", proxy.stats());

        proxy.heal();
        assert_eq!(proxy.state(), Some(LinkState::Up));
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut again, b"back").await;
    }

    #[tokio::test]
    async fn blackhole_freezes_the_link_and_heal_delivers_what_was_held() {
        let upstream = echo_server().await;
        let proxy = WanProxy::spawn(local(), vec![upstream], Duration::from_millis(5)).unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut open, b"before").await;

        proxy.blackhole();
        open.write_all(b"held").await.unwrap();
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        fresh.write_all(b"new").await.unwrap();
        let mut buf = [0u8; 16];
        let silent = tokio::time::timeout(Duration::from_millis(300), open.read(&mut buf)).await;
        assert!(silent.is_err(), "bytes crossed a blackholed link: {silent:?}");
        let silent = tokio::time::timeout(Duration::from_millis(100), fresh.read(&mut buf)).await;
        assert!(silent.is_err(), "a new connection crossed a blackholed link: {silent:?}");

        proxy.heal();
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(&back, b"held");
        let mut back = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(5), fresh.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(&back, b"new");
    }

    #[tokio::test]
    async fn a_blackholed_link_that_is_then_cut_closes_its_connections() {
        let upstream = echo_server().await;
        let proxy = WanProxy::spawn(local(), vec![upstream], Duration::ZERO).unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut open, b"x").await;
        proxy.blackhole();
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.cut();
        expect_closed(&mut open).await;
        expect_closed(&mut fresh).await;
    }

    #[tokio::test]
    async fn connections_are_spread_round_robin_over_the_upstreams_that_accept() {
        let a = named_server("a").await;
        let b = named_server("b").await;
        // A port with nothing listening: connections to it are refused.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let proxy = WanProxy::spawn(local(), vec![a, dead, b], Duration::ZERO).unwrap();
        let mut seen = Vec::new();
        let mut keep = Vec::new();
        for _ in 0..6 {
            let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
            let mut name = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut name)).await.unwrap().unwrap();
            seen.push(name[0]);
            keep.push(s);
        }
        let count = |c: u8| seen.iter().filter(|&&x| x == c).count();
        assert!(count(b'a') >= 2 && count(b'b') >= 2, "not spread over both live upstreams: {seen:?}");
        assert_eq!(count(b'a') + count(b'b'), 6);
        assert_eq!(proxy.stats().no_upstream, 0);
        assert_eq!(proxy.stats().open, 6);
    }

    #[tokio::test]
    async fn a_connection_is_closed_when_no_upstream_accepts() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let proxy = WanProxy::spawn(local(), vec![dead], Duration::ZERO).unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        expect_closed(&mut s).await;
        assert_eq!(proxy.stats().no_upstream, 1);
    }

    #[tokio::test]
    async fn half_close_is_passed_on_after_the_delay() {
        let upstream = echo_server().await;
        let proxy = WanProxy::spawn(local(), vec![upstream], Duration::from_millis(30)).unwrap();
        let s = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let started = StdInstant::now();
        w.write_all(b"last words").await.unwrap();
        w.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, b"last words");
        assert!(started.elapsed() >= Duration::from_millis(60));
    }

    #[tokio::test]
    async fn shutdown_stops_listening_and_closes_connections() {
        let upstream = echo_server().await;
        let proxy = WanProxy::spawn(local(), vec![upstream], Duration::ZERO).unwrap();
        let addr = proxy.addr();
        let mut open = TcpStream::connect(addr).await.unwrap();
        round_trip(&mut open, b"x").await;
        proxy.shutdown();
        assert_eq!(proxy.state(), None);
        expect_closed(&mut open).await;
        let refused = async {
            loop {
                match TcpStream::connect(addr).await {
                    Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), refused).await.expect("the listener is closed");
        // Healing a stopped proxy does not revive it.
        proxy.heal();
        assert_eq!(proxy.state(), None);
    }

    #[test]
    fn spawning_outside_a_runtime_is_an_error() {
        let e = WanProxy::spawn(local(), vec![local()], Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("tokio runtime"), "{e}");
    }

    #[tokio::test]
    async fn without_upstreams_connections_are_closed_at_once() {
        let proxy = WanProxy::spawn(local(), vec![], Duration::ZERO).unwrap();
        assert!(proxy.upstreams().is_empty());
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        expect_closed(&mut s).await;
        assert_eq!(proxy.stats().no_upstream, 1);
        assert_eq!(proxy.stats().forwarded, 0);
    }

    #[tokio::test]
    async fn new_connections_follow_the_upstreams_set_at_runtime_and_open_ones_stay() {
        let a = named_server("a").await;
        let b = named_server("b").await;
        let proxy = WanProxy::spawn(local(), vec![], Duration::ZERO).unwrap();
        let read_name = |mut s: TcpStream| async move {
            let mut name = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut name)).await.unwrap().unwrap();
            (name[0], s)
        };

        proxy.set_upstreams(vec![a]);
        assert_eq!(proxy.upstreams(), vec![a]);
        let (name, mut on_a) = read_name(TcpStream::connect(proxy.addr()).await.unwrap()).await;
        assert_eq!(name, b'a');

        proxy.set_upstreams(vec![b]);
        for _ in 0..3 {
            let (name, _s) = read_name(TcpStream::connect(proxy.addr()).await.unwrap()).await;
            assert_eq!(name, b'b');
        }
        // The connection made before the change still reaches its upstream.
        on_a.write_all(b"still there").await.unwrap();
        let mut buf = [0u8; 1];
        let quiet = tokio::time::timeout(Duration::from_millis(100), on_a.read(&mut buf)).await;
        assert!(quiet.is_err(), "the open connection was closed: {quiet:?}");

        proxy.set_upstreams(vec![]);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        expect_closed(&mut s).await;
        assert_eq!(proxy.stats().no_upstream, 1);
        assert_eq!(proxy.stats().forwarded, 4);
    }
}
