//! Cluster DNS: a minimal authoritative DNS server over UDP, the part CoreDNS plays in a
//! cluster. It answers A queries for the names in a [`DnsRecords`] table (Services and
//! StatefulSet pods under `*.svc.<cluster domain>`), which the kubelet recomputes on every
//! sync.
//!
//! What it speaks (RFC 1035): one question per query; A queries get every address of a
//! known name (TTL 5 s) or NXDOMAIN; any other type gets NOERROR without answers for a
//! known name (so that glibc's `getaddrinfo`, which asks A and AAAA in parallel, resolves
//! promptly) or NXDOMAIN. Replies fit in 512 bytes (answers are cut and TC is set when
//! they would not), echo the question and point to its name (`0xC00C`) from the answers.
//! Malformed queries get FORMERR when their header is readable and are dropped otherwise;
//! opcodes other than QUERY get NOTIMP; responses are never answered.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tracing::debug;

/// Largest reply over UDP without EDNS (RFC 1035 §4.2.1).
const MAX_REPLY_LEN: usize = 512;
/// Size of the buffer a query is received into (queries with EDNS may exceed 512 bytes).
const RECV_BUFFER_LEN: usize = 4096;
const HEADER_LEN: usize = 12;
/// Size of one A answer: name pointer (2), type (2), class (2), TTL (4), length (2), address (4).
const A_ANSWER_LEN: usize = 16;
/// Offset of the question's name in a message, the target of the answers' name pointer.
const QUESTION_NAME_POINTER: [u8; 2] = [0xC0, HEADER_LEN as u8];
/// TTL of every answer, short because the table changes as pods come and go.
const TTL_SECS: u32 = 5;
/// Longest name on the wire, length octets and the final zero included (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 255;
/// How many compression pointers one name may follow.
const MAX_POINTER_JUMPS: usize = 16;
/// Pause after a failed receive, so that a persistent error cannot spin the loop.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);

const OPCODE_QUERY: u8 = 0;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;

const FLAG_QR: u8 = 0x80;
const FLAG_AA: u8 = 0x04;
const FLAG_TC: u8 = 0x02;
const FLAG_RD: u8 = 0x01;

/// Response codes this server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rcode {
    NoError = 0,
    FormErr = 1,
    NxDomain = 3,
    NotImp = 4,
}

/// Names (lowercase, no trailing dot, e.g. "demo-eu-0.demo-eu-peers.default.svc.cluster.local")
/// to IPv4 addresses.
#[derive(Clone, Debug, Default)]
pub struct DnsRecords {
    records: Arc<RwLock<HashMap<String, Vec<Ipv4Addr>>>>,
}

impl DnsRecords {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every record at once (the caller recomputes the whole table each sync).
    /// Names are normalized as [`lookup`](Self::lookup) does; the addresses of names that
    /// normalize alike are merged.
    pub fn replace_all(&self, records: HashMap<String, Vec<Ipv4Addr>>) {
        let mut normalized: HashMap<String, Vec<Ipv4Addr>> = HashMap::with_capacity(records.len());
        for (name, addresses) in records {
            normalized.entry(normalize(&name)).or_default().extend(addresses);
        }
        *self.records.write() = normalized;
    }

    /// The addresses of `name` (case-insensitive, trailing dot ignored).
    pub fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        self.records.read().get(&normalize(name)).cloned()
    }
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A running server; dropping it or calling shutdown() stops it.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl DnsServer {
    /// Binds UDP `addr` (port 53 normally; tests use port 0) and answers from `records`.
    /// Must be called within a tokio runtime.
    pub async fn spawn(addr: SocketAddr, records: DnsRecords) -> io::Result<DnsServer> {
        let socket = UdpSocket::bind(addr).await?;
        let addr = socket.local_addr()?;
        debug!(%addr, "dns server listening");
        let task = tokio::spawn(serve(socket, records));
        Ok(DnsServer { addr, task })
    }

    /// The address the server is bound to (with the actual port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server; its socket is closed as soon as the runtime drops the task.
    pub fn shutdown(&self) {
        if !self.task.is_finished() {
            debug!(addr = %self.addr, "dns server stopping");
        }
        self.task.abort();
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Answers every query inline: answering is pure CPU, so no query waits on another.
async fn serve(socket: UdpSocket, records: DnsRecords) {
    let mut buffer = vec![0u8; RECV_BUFFER_LEN];
    loop {
        let (len, peer) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                debug!(%error, "dns receive failed");
                tokio::time::sleep(RECV_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(reply) = answer(&records, &buffer[..len]) else {
            debug!(%peer, len, "dns packet ignored");
            continue;
        };
        if let Err(error) = socket.send_to(&reply, peer).await {
            debug!(%peer, %error, "dns reply not sent");
        }
    }
}

/// The packet is not a well-formed query.
#[derive(Debug, PartialEq, Eq)]
struct Malformed;

/// The question of a query.
#[derive(Debug, PartialEq, Eq)]
struct Question {
    /// The labels of the name as received (case preserved, to echo it).
    labels: Vec<Vec<u8>>,
    qtype: u16,
    qclass: u16,
}

/// The reply to `query`, or `None` when it is to be ignored (no readable header, or a
/// response rather than a query).
fn answer(records: &DnsRecords, query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..HEADER_LEN)?;
    if header[2] & FLAG_QR != 0 {
        return None;
    }
    let opcode = (header[2] >> 3) & 0x0F;
    if opcode != OPCODE_QUERY {
        debug!(opcode, "dns opcode not implemented");
        return Some(error_reply(header, Rcode::NotImp));
    }
    let question = match parse_question(query) {
        Ok(question) => question,
        Err(Malformed) => {
            debug!(len = query.len(), "malformed dns query");
            return Some(error_reply(header, Rcode::FormErr));
        }
    };
    let qname = lookup_key(&question.labels);
    let addresses = qname.as_deref().and_then(|name| records.lookup(name));
    let (rcode, addresses) = match addresses {
        None => (Rcode::NxDomain, Vec::new()),
        Some(addresses) if question.qtype == TYPE_A && matches!(question.qclass, CLASS_IN | CLASS_ANY) => {
            (Rcode::NoError, addresses)
        }
        Some(_) => (Rcode::NoError, Vec::new()),
    };

    let mut reply = Vec::with_capacity(MAX_REPLY_LEN);
    reply.extend_from_slice(&[0; HEADER_LEN]);
    write_question(&mut reply, &question);
    let room = (MAX_REPLY_LEN - reply.len()) / A_ANSWER_LEN;
    let count = addresses.len().min(room);
    let truncated = count < addresses.len();
    for address in &addresses[..count] {
        reply.extend_from_slice(&QUESTION_NAME_POINTER);
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&TTL_SECS.to_be_bytes());
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&address.octets());
    }
    // At most (512 - 12 - 5) / 16 answers, so the count fits in a u16.
    write_header(&mut reply, header, rcode, truncated, 1, count as u16);
    debug!(
        qname = qname.as_deref().unwrap_or("<unprintable>"),
        qtype = question.qtype,
        qclass = question.qclass,
        rcode = ?rcode,
        answers = count,
        truncated,
        "dns query answered"
    );
    Some(reply)
}

/// A reply made of a header alone.
fn error_reply(query_header: &[u8], rcode: Rcode) -> Vec<u8> {
    let mut reply = vec![0; HEADER_LEN];
    write_header(&mut reply, query_header, rcode, false, 0, 0);
    reply
}

/// Writes the header at the start of `reply`: ID, opcode and RD from the query; QR and AA
/// set; RA, Z and the authority and additional counts zero.
fn write_header(reply: &mut [u8], query_header: &[u8], rcode: Rcode, truncated: bool, qdcount: u16, ancount: u16) {
    let opcode_and_rd = query_header[2] & (0x78 | FLAG_RD);
    let tc = if truncated { FLAG_TC } else { 0 };
    reply[0] = query_header[0];
    reply[1] = query_header[1];
    reply[2] = FLAG_QR | opcode_and_rd | FLAG_AA | tc;
    reply[3] = rcode as u8;
    reply[4..6].copy_from_slice(&qdcount.to_be_bytes());
    reply[6..8].copy_from_slice(&ancount.to_be_bytes());
    reply[8..12].fill(0);
}

/// Writes the question uncompressed, so that its name sits at offset 12 as the answers'
/// pointers expect.
fn write_question(reply: &mut Vec<u8>, question: &Question) {
    for label in &question.labels {
        // parse_name bounds labels to 63 bytes.
        reply.push(label.len() as u8);
        reply.extend_from_slice(label);
    }
    reply.push(0);
    reply.extend_from_slice(&question.qtype.to_be_bytes());
    reply.extend_from_slice(&question.qclass.to_be_bytes());
}

/// Parses the one question of a query whose header is readable. The answer, authority
/// and additional sections (e.g. an EDNS OPT record) are ignored.
fn parse_question(query: &[u8]) -> Result<Question, Malformed> {
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    if qdcount != 1 {
        return Err(Malformed);
    }
    let (labels, end) = parse_name(query, HEADER_LEN)?;
    let fixed = query.get(end..end + 4).ok_or(Malformed)?;
    Ok(Question {
        labels,
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
    })
}

/// Parses the name at `start` in `message`, following compression pointers (RFC 1035
/// §4.1.4). Returns its labels and the offset just past the name where it starts.
///
/// Defensive: a pointer must point strictly before itself, at most [`MAX_POINTER_JUMPS`]
/// are followed, the name may not exceed [`MAX_NAME_LEN`] bytes on the wire, and label
/// types other than plain labels and pointers are malformed; so the loop always ends.
fn parse_name(message: &[u8], start: usize) -> Result<(Vec<Vec<u8>>, usize), Malformed> {
    let mut labels = Vec::new();
    let mut position = start;
    let mut end = None;
    let mut wire_len = 1;
    let mut jumps = 0;
    loop {
        let length = *message.get(position).ok_or(Malformed)?;
        match length & 0xC0 {
            0x00 if length == 0 => return Ok((labels, end.unwrap_or(position + 1))),
            0x00 => {
                let length = usize::from(length);
                wire_len += 1 + length;
                if wire_len > MAX_NAME_LEN {
                    return Err(Malformed);
                }
                let label = message.get(position + 1..position + 1 + length).ok_or(Malformed)?;
                labels.push(label.to_vec());
                position += 1 + length;
            }
            0xC0 => {
                let low = *message.get(position + 1).ok_or(Malformed)?;
                let target = usize::from(u16::from_be_bytes([length & 0x3F, low]));
                if target >= position || jumps == MAX_POINTER_JUMPS {
                    return Err(Malformed);
                }
                jumps += 1;
                end.get_or_insert(position + 2);
                position = target;
            }
            _ => return Err(Malformed),
        }
    }
}

/// The table key of a name: its labels joined by dots, or `None` when that would not be
/// the same name (a label that is not UTF-8 or holds a dot), which no record can match.
fn lookup_key(labels: &[Vec<u8>]) -> Option<String> {
    let mut key = String::new();
    for label in labels {
        let label = std::str::from_utf8(label).ok()?;
        if label.contains('.') {
            return None;
        }
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(label);
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPE_AAAA: u16 = 28;
    const TYPE_MX: u16 = 15;
    const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

    /// A query as a stub resolver sends it: RD set, one question of class IN.
    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend_from_slice(&id.to_be_bytes());
        message.extend_from_slice(&[0x01, 0x00]);
        message.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        message.extend_from_slice(&encode_name(name));
        message.extend_from_slice(&qtype.to_be_bytes());
        message.extend_from_slice(&CLASS_IN.to_be_bytes());
        message
    }

    fn encode_name(name: &str) -> Vec<u8> {
        let mut encoded = Vec::new();
        for label in name.trim_end_matches('.').split('.').filter(|label| !label.is_empty()) {
            encoded.push(u8::try_from(label.len()).unwrap());
            encoded.extend_from_slice(label.as_bytes());
        }
        encoded.push(0);
        encoded
    }

    /// A reply, decoded strictly: anything unexpected fails the test.
    #[derive(Debug)]
    struct Reply {
        id: u16,
        flags: u8,
        rcode: u8,
        qdcount: u16,
        question: Vec<u8>,
        addresses: Vec<Ipv4Addr>,
    }

    impl Reply {
        fn truncated(&self) -> bool {
            self.flags & FLAG_TC != 0
        }
    }

    fn decode(reply: &[u8]) -> Reply {
        assert!(reply.len() >= HEADER_LEN, "short reply: {reply:?}");
        assert!(reply.len() <= MAX_REPLY_LEN, "reply of {} bytes", reply.len());
        let id = u16::from_be_bytes([reply[0], reply[1]]);
        let qdcount = u16::from_be_bytes([reply[4], reply[5]]);
        let ancount = u16::from_be_bytes([reply[6], reply[7]]);
        assert_eq!(&reply[8..12], &[0; 4], "authority and additional counts");
        assert_eq!(reply[3] & 0xF0, 0, "RA and Z are clear");
        let mut position = HEADER_LEN;
        let mut question = Vec::new();
        if qdcount == 1 {
            let (_, end) = parse_name(reply, HEADER_LEN).expect("question name");
            question = reply[HEADER_LEN..end + 4].to_vec();
            position = end + 4;
        }
        let mut addresses = Vec::new();
        for _ in 0..ancount {
            let record = &reply[position..position + A_ANSWER_LEN];
            assert_eq!(&record[..2], &QUESTION_NAME_POINTER, "answer name points to the question");
            assert_eq!(u16::from_be_bytes([record[2], record[3]]), TYPE_A);
            assert_eq!(u16::from_be_bytes([record[4], record[5]]), CLASS_IN);
            assert_eq!(u32::from_be_bytes([record[6], record[7], record[8], record[9]]), TTL_SECS);
            assert_eq!(u16::from_be_bytes([record[10], record[11]]), 4);
            addresses.push(Ipv4Addr::new(record[12], record[13], record[14], record[15]));
            position += A_ANSWER_LEN;
        }
        assert_eq!(position, reply.len(), "no trailing bytes");
        Reply { id, flags: reply[2], rcode: reply[3] & 0x0F, qdcount, question, addresses }
    }

    fn records(entries: &[(&str, &[Ipv4Addr])]) -> DnsRecords {
        let records = DnsRecords::new();
        records.replace_all(entries.iter().map(|(name, addresses)| (name.to_string(), addresses.to_vec())).collect());
        records
    }

    const POD: &str = "demo-eu-0.demo-eu-peers.default.svc.cluster.local";
    const POD_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 7);
    const SERVICE: &str = "demo-eu.default.svc.cluster.local";
    const SERVICE_ADDRESSES: [Ipv4Addr; 3] =
        [Ipv4Addr::new(10, 1, 0, 7), Ipv4Addr::new(10, 1, 0, 8), Ipv4Addr::new(10, 1, 0, 9)];

    fn cluster_records() -> DnsRecords {
        records(&[(POD, &[POD_ADDRESS]), (SERVICE, &SERVICE_ADDRESSES)])
    }

    async fn spawn_server(records: DnsRecords) -> DnsServer {
        DnsServer::spawn("127.0.0.1:0".parse().unwrap(), records).await.expect("bind the dns server")
    }

    async fn client() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.expect("bind a client socket")
    }

    /// Sends `message` to `server` and waits for one reply, or `None` after `timeout`.
    async fn exchange_within(server: SocketAddr, message: &[u8], timeout: Duration) -> Option<Vec<u8>> {
        let socket = client().await;
        socket.send_to(message, server).await.expect("send the query");
        let mut buffer = vec![0; RECV_BUFFER_LEN];
        match tokio::time::timeout(timeout, socket.recv_from(&mut buffer)).await {
            Ok(Ok((len, from))) => {
                assert_eq!(from, server, "reply comes from the server");
                Some(buffer[..len].to_vec())
            }
            Ok(Err(_)) | Err(_) => None,
        }
    }

    async fn exchange(server: SocketAddr, message: &[u8]) -> Reply {
        decode(&exchange_within(server, message, REPLY_TIMEOUT).await.expect("a reply"))
    }

    #[tokio::test]
    async fn a_known_name_resolves_to_all_its_addresses_over_udp() {
        let server = spawn_server(cluster_records()).await;
        let message = query(0xBEEF, SERVICE, TYPE_A);
        let reply = exchange(server.addr(), &message).await;
        assert_eq!(reply.id, 0xBEEF);
        assert_eq!(reply.flags, FLAG_QR | FLAG_AA | FLAG_RD, "QR, AA, RD copied, QUERY, not truncated");
        assert_eq!(reply.rcode, Rcode::NoError as u8);
        assert_eq!(reply.qdcount, 1);
        assert_eq!(reply.question, &message[HEADER_LEN..], "question echoed");
        assert_eq!(reply.addresses, SERVICE_ADDRESSES);

        let reply = exchange(server.addr(), &query(7, POD, TYPE_A)).await;
        assert_eq!(reply.addresses, [POD_ADDRESS]);
    }

    #[tokio::test]
    async fn an_unknown_name_gets_nxdomain() {
        let server = spawn_server(cluster_records()).await;
        for qtype in [TYPE_A, TYPE_AAAA, TYPE_MX] {
            let message = query(42, "nope.default.svc.cluster.local", qtype);
            let reply = exchange(server.addr(), &message).await;
            assert_eq!(reply.id, 42);
            assert_eq!(reply.rcode, Rcode::NxDomain as u8, "qtype {qtype}");
            assert_eq!(reply.flags & (FLAG_QR | FLAG_AA), FLAG_QR | FLAG_AA);
            assert_eq!(reply.question, &message[HEADER_LEN..]);
            assert!(reply.addresses.is_empty());
        }
    }

    #[tokio::test]
    async fn aaaa_for_a_known_name_is_nodata() {
        let server = spawn_server(cluster_records()).await;
        for qtype in [TYPE_AAAA, TYPE_MX] {
            let message = query(9, SERVICE, qtype);
            let reply = exchange(server.addr(), &message).await;
            assert_eq!(reply.rcode, Rcode::NoError as u8, "qtype {qtype}");
            assert_eq!(reply.question, &message[HEADER_LEN..]);
            assert!(reply.addresses.is_empty(), "qtype {qtype}");
        }
    }

    #[tokio::test]
    async fn names_are_case_insensitive_and_the_question_keeps_its_case() {
        let server = spawn_server(records(&[("Demo-EU.Default.svc.Cluster.Local.", &SERVICE_ADDRESSES)])).await;
        let message = query(1, "DEMO-eu.default.SVC.cluster.local.", TYPE_A);
        let reply = exchange(server.addr(), &message).await;
        assert_eq!(reply.rcode, Rcode::NoError as u8);
        assert_eq!(reply.addresses, SERVICE_ADDRESSES);
        assert_eq!(reply.question, &message[HEADER_LEN..], "the question is echoed as asked");

        let records = records(&[(SERVICE, &SERVICE_ADDRESSES)]);
        assert_eq!(records.lookup("Demo-Eu.Default.Svc.Cluster.Local."), Some(SERVICE_ADDRESSES.to_vec()));
        assert_eq!(records.lookup("demo-eu.default.svc.cluster.local"), Some(SERVICE_ADDRESSES.to_vec()));
        assert_eq!(records.lookup("demo-eu.default.svc.cluster"), None);
    }

    #[test]
    fn replace_all_replaces_every_record() {
        let records = cluster_records();
        let handle = records.clone();
        let other = Ipv4Addr::new(10, 2, 0, 1);
        handle.replace_all(HashMap::from([("other.default.svc.cluster.local".to_string(), vec![other])]));
        assert_eq!(records.lookup(SERVICE), None);
        assert_eq!(records.lookup(POD), None);
        assert_eq!(records.lookup("other.default.svc.cluster.local"), Some(vec![other]));
    }

    #[test]
    fn compressed_names_parse() {
        // A header, "cluster.local" at 12, then "svc" + pointer to 12 at 27, then
        // "demo-eu.default" + pointer to 27 at 33: two chained pointers.
        let mut message = vec![0; HEADER_LEN];
        message.extend_from_slice(&encode_name("cluster.local"));
        let svc = message.len();
        message.extend_from_slice(&[3, b's', b'v', b'c', 0xC0, 12]);
        let service = message.len();
        message.extend_from_slice(&[7, b'd', b'e', b'm', b'o', b'-', b'e', b'u', 7]);
        message.extend_from_slice(b"default");
        message.extend_from_slice(&[0xC0, u8::try_from(svc).unwrap()]);
        let after = message.len();
        message.extend_from_slice(&[0xAA, 0xBB]);

        let (labels, end) = parse_name(&message, service).expect("compressed name");
        assert_eq!(lookup_key(&labels).as_deref(), Some(SERVICE));
        assert_eq!(end, after, "the name ends after its first pointer");

        let (labels, end) = parse_name(&message, svc).expect("compressed name");
        assert_eq!(lookup_key(&labels).as_deref(), Some("svc.cluster.local"));
        assert_eq!(end, svc + 6);
    }

    #[test]
    fn a_compressed_question_is_answered_and_echoed_expanded() {
        // The question ends with a pointer to offset 11, the low byte of ARCOUNT, which is
        // zero: the root name. The reply's question must be plain, as its answers point to it.
        let mut message = query(5, SERVICE, TYPE_A);
        message.truncate(HEADER_LEN);
        message.extend_from_slice(&encode_name(SERVICE)[..SERVICE.len() + 1]);
        message.extend_from_slice(&[0xC0, 11]);
        message.extend_from_slice(&TYPE_A.to_be_bytes());
        message.extend_from_slice(&CLASS_IN.to_be_bytes());
        let reply = decode(&answer(&cluster_records(), &message).expect("a reply"));
        assert_eq!(reply.rcode, Rcode::NoError as u8);
        assert_eq!(reply.addresses, SERVICE_ADDRESSES);
        assert_eq!(reply.question, &query(5, SERVICE, TYPE_A)[HEADER_LEN..]);

        // A pointer into the question itself is a loop: FORMERR, not a hang.
        let mut looping = message[..HEADER_LEN].to_vec();
        looping.extend_from_slice(&[3, b's', b'v', b'c', 0xC0, 12]);
        looping.extend_from_slice(&TYPE_A.to_be_bytes());
        looping.extend_from_slice(&CLASS_IN.to_be_bytes());
        let reply = decode(&answer(&cluster_records(), &looping).expect("a reply"));
        assert_eq!(reply.rcode, Rcode::FormErr as u8);
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_malformed() {
        let mut message = vec![0; HEADER_LEN];
        message.extend_from_slice(&[0xC0, 12]);
        assert_eq!(parse_name(&message, 12), Err(Malformed), "a pointer to itself");
        let mut message = vec![0; HEADER_LEN];
        message.extend_from_slice(&[0xC0, 14, 0]);
        assert_eq!(parse_name(&message, 12), Err(Malformed), "a forward pointer");
        let mut message = vec![0; HEADER_LEN];
        message.extend_from_slice(&[1, b'a', 0xC0, 12]);
        assert_eq!(parse_name(&message, 12), Err(Malformed), "a loop through a label");
        let mut message = vec![0; HEADER_LEN];
        message.extend_from_slice(&[0x40, 0]);
        assert_eq!(parse_name(&message, 12), Err(Malformed), "an extended label type");
        let mut message = vec![0; HEADER_LEN];
        for _ in 0..5 {
            message.push(63);
            message.extend_from_slice(&[b'x'; 63]);
        }
        message.push(0);
        assert_eq!(parse_name(&message, 12), Err(Malformed), "a name over 255 bytes");
    }

    #[test]
    fn malformed_queries_with_a_readable_header_get_formerr() {
        let records = cluster_records();
        let valid = query(0x1234, SERVICE, TYPE_A);
        let mut two_questions = valid.clone();
        two_questions[5] = 2;
        let mut no_question = valid.clone();
        no_question[5] = 0;
        let cut = valid[..valid.len() - 1].to_vec();
        for message in [two_questions, no_question, cut] {
            let reply = decode(&answer(&records, &message).expect("a reply"));
            assert_eq!(reply.id, 0x1234);
            assert_eq!(reply.rcode, Rcode::FormErr as u8);
            assert_eq!(reply.flags & (FLAG_QR | FLAG_RD), FLAG_QR | FLAG_RD);
            assert_eq!(reply.qdcount, 0);
        }
    }

    #[test]
    fn other_opcodes_get_notimp() {
        let mut message = query(3, SERVICE, TYPE_A);
        message[2] |= 2 << 3; // STATUS
        let reply = decode(&answer(&cluster_records(), &message).expect("a reply"));
        assert_eq!(reply.rcode, Rcode::NotImp as u8);
        assert_eq!((reply.flags >> 3) & 0x0F, 2, "the opcode is copied");
        assert!(reply.addresses.is_empty());
    }

    #[test]
    fn responses_and_short_packets_are_ignored() {
        let records = cluster_records();
        let mut response = query(3, SERVICE, TYPE_A);
        response[2] |= FLAG_QR;
        assert_eq!(answer(&records, &response), None);
        assert_eq!(answer(&records, &[0; HEADER_LEN - 1]), None);
        assert_eq!(answer(&records, &[]), None);
    }

    #[test]
    fn answers_that_would_exceed_512_bytes_are_cut_and_flagged_truncated() {
        let many: Vec<Ipv4Addr> = (0..200).map(|i| Ipv4Addr::new(10, 3, (i / 256) as u8, (i % 256) as u8)).collect();
        let records = records(&[(SERVICE, &many)]);
        let raw = answer(&records, &query(8, SERVICE, TYPE_A)).expect("a reply");
        assert!(raw.len() <= MAX_REPLY_LEN);
        let reply = decode(&raw);
        assert!(reply.truncated());
        assert_eq!(reply.rcode, Rcode::NoError as u8);
        assert_eq!(reply.addresses, many[..reply.addresses.len()]);
        assert!(raw.len() + A_ANSWER_LEN > MAX_REPLY_LEN, "as many answers as fit");

        let reply = decode(&answer(&records, &query(8, POD, TYPE_A)).expect("a reply"));
        assert!(!reply.truncated());
    }

    /// xorshift64: deterministic pseudo-random bytes without a dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    fn check_never_panics(records: &DnsRecords, message: &[u8]) {
        if let Some(reply) = answer(records, message) {
            assert!(reply.len() >= HEADER_LEN && reply.len() <= MAX_REPLY_LEN, "reply of {} bytes", reply.len());
            assert_eq!(reply[..2], message[..2], "the id is copied");
            assert_ne!(reply[2] & FLAG_QR, 0);
        }
    }

    #[test]
    fn random_and_truncated_packets_never_panic() {
        let records = cluster_records();
        let valid = query(0xABCD, SERVICE, TYPE_A);
        for len in 0..=valid.len() {
            check_never_panics(&records, &valid[..len]);
        }

        let mut random = XorShift(0x9E37_79B9_7F4A_7C15);
        for round in 0..5000 {
            let len = random.below(600);
            let mut message: Vec<u8> = (0..len).map(|_| random.next() as u8).collect();
            // Most rounds look like a query so that the name parser, not the header
            // checks, meets the random bytes; some bytes are pointers or short labels.
            if round % 4 != 0 && message.len() >= HEADER_LEN {
                message[2] &= 0x01;
                message[4..6].copy_from_slice(&[0, 1]);
                for byte in &mut message[HEADER_LEN..] {
                    match random.below(4) {
                        0 => *byte |= 0xC0,
                        1 => *byte &= 0x0F,
                        _ => {}
                    }
                }
            }
            check_never_panics(&records, &message);
            // A valid query with random bytes spliced into its question.
            let mut spliced = valid.clone();
            let at = HEADER_LEN + random.below(spliced.len() - HEADER_LEN);
            spliced[at] = random.next() as u8;
            spliced.truncate(at + 1 + random.below(valid.len() - at));
            check_never_panics(&records, &spliced);
        }
    }

    #[tokio::test]
    async fn the_server_keeps_answering_after_garbage_and_stops_on_shutdown() {
        let server = spawn_server(cluster_records()).await;
        for garbage in [&[][..], &[1, 2, 3][..], &[0xFF; 40][..]] {
            let socket = client().await;
            socket.send_to(garbage, server.addr()).await.expect("send garbage");
        }
        let reply = exchange(server.addr(), &query(11, POD, TYPE_A)).await;
        assert_eq!(reply.addresses, [POD_ADDRESS]);

        server.shutdown();
        tokio::task::yield_now().await;
        let reply = exchange_within(server.addr(), &query(12, POD, TYPE_A), Duration::from_millis(300)).await;
        assert_eq!(reply, None, "no answer after shutdown");
    }

    #[tokio::test]
    async fn dropping_the_server_stops_it() {
        let server = spawn_server(cluster_records()).await;
        let addr = server.addr();
        drop(server);
        tokio::task::yield_now().await;
        let reply = exchange_within(addr, &query(13, POD, TYPE_A), Duration::from_millis(300)).await;
        assert_eq!(reply, None, "no answer after drop");
    }
}
