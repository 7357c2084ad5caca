//! Kafka → corecast → clients, end to end: two real `corecast serve`
//! processes (the multi-node shape) consume the same topic of a real Apache
//! Kafka broker; records of every target kind, in every codec, produced by
//! an independent client (the testkit's), reach exactly their clients on
//! both nodes; a malformed record does not stop the next.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use corecast_testkit::kafka::{kafka, unique_topic, TestRecord};
use corecast_testkit::server::{auth_body, Server, TcpClient, WsClient};
use kafka_protocol::records::Compression;

const ACCEPTS: &[u32] = &[1000, 1001, 1002, 1003, 1004, 1005];
/// One end marker per partition: a client has everything once it saw all.
const ENDS: [&str; 3] = ["end-0", "end-1", "end-2"];

fn node(topic: &str) -> Server {
    Server::builder(env!("CARGO_BIN_EXE_corecast"))
        .args(["--shards", "2", "--auth-mode", "insecure"])
        .args([
            "--kafka-brokers",
            &kafka().bootstrap(),
            "--kafka-topic",
            topic,
        ])
        // The topic is new: earliest = everything produced from now on,
        // without depending on when the node resolved its start offsets.
        .args(["--kafka-start", "earliest"])
        .start()
        .expect("start corecast with Kafka ingest")
}

enum Client {
    Tcp(TcpClient),
    Ws(WsClient),
}

impl Client {
    fn connect(
        ws: bool,
        addr_tcp: SocketAddr,
        addr_ws: SocketAddr,
        mid: i64,
        key: &str,
        room: &str,
    ) -> Client {
        let body = auth_body(mid, key, room, ACCEPTS, None);
        if ws {
            Client::Ws(WsClient::connect_auth(addr_ws, &body).expect("ws auth"))
        } else {
            Client::Tcp(TcpClient::connect_auth(addr_tcp, &body).expect("tcp auth"))
        }
    }

    /// Bodies of application pushes until every end marker arrived (included).
    fn bodies_until_end(&mut self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        loop {
            let p = match self {
                Client::Tcp(c) => c.read(),
                Client::Ws(c) => c.read_packet(),
            }
            .expect("push before the end marker");
            if p.op < 1000 {
                continue;
            }
            let text = String::from_utf8_lossy(&p.body).into_owned();
            assert!(out.insert(text.clone()), "{text} delivered twice");
            if ENDS.iter().all(|e| out.contains(*e)) {
                return out;
            }
        }
    }
}

#[test]
fn every_target_kind_reaches_exactly_its_clients_on_both_nodes() {
    let k = kafka();
    let topic = unique_topic("e2e");
    k.create_topic(&topic, 3);
    let nodes = [node(&topic), node(&topic)];

    // Per node: A (tcp, mid 1, room live://1), B (ws, mid 2, room live://2),
    // C (tcp, mid 1, room live://2).
    let mut clients: Vec<(String, Client)> = Vec::new();
    for (n, s) in nodes.iter().enumerate() {
        clients.push((
            format!("A{n}"),
            Client::connect(false, s.tcp, s.ws, 1, &format!("ka{n}"), "live://1"),
        ));
        clients.push((
            format!("B{n}"),
            Client::connect(true, s.tcp, s.ws, 2, &format!("kb{n}"), "live://2"),
        ));
        clients.push((
            format!("C{n}"),
            Client::connect(false, s.tcp, s.ws, 1, &format!("kc{n}"), "live://2"),
        ));
    }

    let codecs = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    let records = [
        TestRecord::native("room:live://1", 1000, "room1"),
        TestRecord::native("room:live://2", 1001, "room2"),
        TestRecord::native("user:1", 1002, "user1"),
        TestRecord::native("conn:kb0", 1003, "conn-kb0"),
        TestRecord::native("conn:kb1", 1003, "conn-kb1"),
        TestRecord::raw(Some(b"garbage-target"), Some(b"malformed")),
        TestRecord::native("all", 1004, "all"),
    ];
    for (i, r) in records.iter().enumerate() {
        // Partitions and codecs vary; per-target order is not asserted
        // across partitions, only the delivered set.
        k.produce(
            &topic,
            i as i32 % 3,
            std::slice::from_ref(r),
            codecs[i % codecs.len()],
        );
    }
    // An end marker on every partition, after everything else on it.
    for (p, end) in ENDS.iter().enumerate() {
        k.produce(
            &topic,
            p as i32,
            &[TestRecord::native("all", 1005, *end)],
            Compression::None,
        );
    }

    let set = |v: &[&str]| {
        v.iter()
            .chain(ENDS.iter())
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    };
    for (name, c) in clients.iter_mut() {
        let n = &name[1..];
        let want = match &name[..1] {
            "A" => set(&["room1", "user1", "all"]),
            "B" => set(&["room2", &format!("conn-kb{n}"), "all"]),
            _ => set(&["room2", "user1", "all"]),
        };
        let got = c.bodies_until_end();
        assert_eq!(got, want, "client {name}");
    }
}
