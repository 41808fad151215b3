//! Commands driven in-process through the parser and the dispatcher, against a real
//! node state (no sockets).

use std::sync::Arc;

use super::*;
use crate::api::resp::codec::{Parser, ParserLimits, encode_command};
use crate::db::{Db, Limits};
use crate::metrics::Metrics;
use crate::state::NodeInfo;
use crate::store::{Origin, OriginTable, Store, StoreConfig};

mod json;
mod keyspace;
mod scan;
mod server;

struct Harness {
    state: Arc<NodeState>,
    shared: Shared,
    session: Session,
    out: Out,
}

fn node_state(default_ttl_ms: Option<u64>, limits: Limits) -> Arc<NodeState> {
    let origins = Arc::new(OriginTable::new(Origin { node_id: "eu-0".into(), region: "eu".into() }));
    let db = Db::standalone(Store::new(StoreConfig::default(), origins), limits, Arc::new(Metrics::default()));
    Arc::new(NodeState::standalone(db, NodeInfo { node_id: "eu-0".into(), region: "eu".into() }, default_ttl_ms))
}

impl Harness {
    fn new() -> Self {
        Self::with(None, Limits::default())
    }

    fn with(default_ttl_ms: Option<u64>, limits: Limits) -> Self {
        let shared = Shared::new(6379);
        let session = Session::new(shared.next_client_id(), None, None);
        Harness { state: node_state(default_ttl_ms, limits), shared, session, out: Out::new() }
    }

    /// Runs one command; returns its reply bytes.
    fn run_bytes(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        encode_command(args, &mut wire);
        let mut parser = Parser::new(ParserLimits::default());
        let n = parser.parse(&wire).expect("valid frame").expect("complete frame");
        assert_eq!(n, wire.len());
        self.out.clear();
        let mut ctx = Ctx::new(&self.state, &self.shared, &mut self.session, &mut self.out);
        execute(&mut ctx, parser.args(&wire));
        self.out.as_bytes().to_vec()
    }

    /// Runs one command given as words; returns its reply as text.
    fn run(&mut self, args: &[&str]) -> String {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        String::from_utf8(self.run_bytes(&args)).expect("utf-8 reply")
    }

    fn pttl(&mut self, key: &str) -> i64 {
        let reply = self.run(&["PTTL", key]);
        reply.trim_start_matches(':').trim_end().parse().expect("integer reply")
    }

    fn metric(&self, line_start: &str) -> String {
        let rendered = self.state.db.metrics().render(&Default::default());
        rendered.lines().find(|l| l.starts_with(line_start)).map(str::to_owned).unwrap_or_default()
    }
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

const OK: &str = "+OK\r\n";
const NIL: &str = "$-1\r\n";
