//! Where every node and WAN link of a local fleet listens, and the flags each node
//! gets. Pure: no I/O, so that it is unit-tested on its own.
//!
//! Node `i` of region number `r` (both from 0) listens on `127.<net>.<r+1>.<i+1>` with
//! the standard ports (HTTP 8080, Redis 6379, peers 7946 by default). The WAN link
//! from region `r` to region `d` listens on `127.<net>.<r+1>.<101+d>` at the peer port
//! and forwards to the peer ports of region `d`'s nodes. A node's seeds are the peer
//! addresses of the other nodes of its region plus, for every other region, the link
//! from its region to that one — so traffic between regions always crosses a link.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::FleetOptions;

/// The ports every node of a fleet uses (on its own loopback address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub http: u16,
    pub resp: u16,
    pub peer: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports { http: 8080, resp: 6379, peer: 7946 }
    }
}

/// One node of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// `<region>-<i>`.
    pub node_id: String,
    pub region: String,
    pub http: SocketAddr,
    pub resp: SocketAddr,
    pub peer: SocketAddr,
    /// Seeds: the region's other nodes, then one WAN link per other region.
    pub peers: Vec<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// Where its stdout and stderr go; `None`: forwarded to the fleet's stderr.
    pub log_file: Option<PathBuf>,
}

impl NodePlan {
    /// The node's command line (after the executable), followed by `extra`.
    pub fn args(&self, extra: &[String]) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            args.push(name.into());
            args.push(value);
        };
        flag("--node-id", self.node_id.clone().into());
        flag("--region", self.region.clone().into());
        flag("--http-addr", self.http.to_string().into());
        flag("--resp-addr", self.resp.to_string().into());
        flag("--peer-addr", self.peer.to_string().into());
        flag("--advertise-addr", self.peer.to_string().into());
        if !self.peers.is_empty() {
            let peers: Vec<String> = self.peers.iter().map(|p| p.to_string()).collect();
            flag("--peers", peers.join(",").into());
        }
        if let Some(dir) = &self.data_dir {
            flag("--data-dir", dir.clone().into_os_string());
        }
        args.extend(extra.iter().map(OsString::from));
        args
    }

    /// `http://IP:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The `redis-cli` command that reaches this node.
    pub fn redis_cli(&self) -> String {
        format!("redis-cli -h {} -p {}", self.resp.ip(), self.resp.port())
    }
}

/// The simulated WAN link from one region to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    pub from: String,
    pub to: String,
    pub listen: SocketAddr,
    /// The peer addresses of the nodes of region `to`.
    pub upstreams: Vec<SocketAddr>,
}

/// Every address of a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPlan {
    pub nodes: Vec<NodePlan>,
    pub links: Vec<LinkPlan>,
}

fn ip(net: u8, region: usize, host: usize) -> Ipv4Addr {
    // Callers keep region < MAX_REGIONS and host <= 100 + MAX_REGIONS, so both fit.
    Ipv4Addr::new(127, net, u8::try_from(region + 1).unwrap_or(u8::MAX), u8::try_from(host).unwrap_or(u8::MAX))
}

/// Lays the fleet out on loopback addresses.
pub fn plan(opts: &FleetOptions) -> FleetPlan {
    let ports = opts.ports;
    let per_region = usize::from(opts.nodes_per_region);
    let peer_addr = |r: usize, i: usize| SocketAddr::from((ip(opts.net, r, i + 1), ports.peer));
    let link_addr = |from: usize, to: usize| SocketAddr::from((ip(opts.net, from, 101 + to), ports.peer));
    let mut nodes = Vec::new();
    for (r, region) in opts.regions.iter().enumerate() {
        for i in 0..per_region {
            let node_id = format!("{region}-{i}");
            let host = ip(opts.net, r, i + 1);
            let mut peers: Vec<SocketAddr> = (0..per_region).filter(|&j| j != i).map(|j| peer_addr(r, j)).collect();
            peers.extend((0..opts.regions.len()).filter(|&d| d != r).map(|d| link_addr(r, d)));
            let node_dir = opts.base_dir.as_ref().map(|b| b.join(&node_id));
            nodes.push(NodePlan {
                node_id,
                region: region.clone(),
                http: SocketAddr::from((host, ports.http)),
                resp: SocketAddr::from((host, ports.resp)),
                peer: SocketAddr::from((host, ports.peer)),
                peers,
                data_dir: if opts.data { node_dir.as_ref().map(|d| d.join("data")) } else { None },
                log_file: node_dir.map(|d| d.join("node.log")),
            });
        }
    }
    let mut links = Vec::new();
    for (r, from) in opts.regions.iter().enumerate() {
        for (d, to) in opts.regions.iter().enumerate() {
            if d != r {
                links.push(LinkPlan {
                    from: from.clone(),
                    to: to.clone(),
                    listen: link_addr(r, d),
                    upstreams: (0..per_region).map(|i| peer_addr(d, i)).collect(),
                });
            }
        }
    }
    FleetPlan { nodes, links }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetArgs;
    use clap::Parser;

    fn options(args: &[&str]) -> FleetOptions {
        let mut all = vec!["fleet"];
        all.extend_from_slice(args);
        FleetArgs::parse_from(all).validate().unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nodes_get_one_loopback_address_each_and_the_standard_ports() {
        let p = plan(&options(&["--regions", "eu,us,ap", "--nodes-per-region", "2"]));
        let ids: Vec<&str> = p.nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["eu-0", "eu-1", "us-0", "us-1", "ap-0", "ap-1"]);
        let us1 = &p.nodes[3];
        assert_eq!(us1.region, "us");
        assert_eq!(
            (us1.http, us1.resp, us1.peer),
            (addr("127.0.2.2:8080"), addr("127.0.2.2:6379"), addr("127.0.2.2:7946"))
        );
        assert_eq!(us1.redis_cli(), "redis-cli -h 127.0.2.2 -p 6379");
        assert_eq!(us1.http_url(), "http://127.0.2.2:8080");
    }

    #[test]
    fn seeds_are_the_region_mates_and_one_wan_link_per_other_region() {
        let p = plan(&options(&["--regions", "eu,us,ap", "--nodes-per-region", "2"]));
        let eu0 = &p.nodes[0];
        assert_eq!(eu0.peers, [addr("127.0.1.2:7946"), addr("127.0.1.102:7946"), addr("127.0.1.103:7946")]);
        assert_eq!(p.links.len(), 6);
        let eu_to_us = p.links.iter().find(|l| l.from == "eu" && l.to == "us").unwrap();
        assert_eq!(eu_to_us.listen, addr("127.0.1.102:7946"));
        assert_eq!(eu_to_us.upstreams, [addr("127.0.2.1:7946"), addr("127.0.2.2:7946")]);
        let ap_to_eu = p.links.iter().find(|l| l.from == "ap" && l.to == "eu").unwrap();
        assert_eq!(ap_to_eu.listen, addr("127.0.3.101:7946"));
        // No node listens where a link does.
        for l in &p.links {
            assert!(p.nodes.iter().all(|n| n.peer != l.listen && n.http != l.listen));
        }
    }

    #[test]
    fn the_command_line_carries_every_address_and_the_extra_flags_last() {
        let opts = options(&[
            "--regions",
            "eu,us",
            "--nodes-per-region",
            "1",
            "--net",
            "9",
            "--http-port",
            "18080",
            "--base-dir",
            "/tmp/f",
            "--data",
            "--",
            "--max-memory",
            "64mb",
        ]);
        let p = plan(&opts);
        let args: Vec<String> =
            p.nodes[1].args(&opts.node_args).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--node-id",
                "us-0",
                "--region",
                "us",
                "--http-addr",
                "127.9.2.1:18080",
                "--resp-addr",
                "127.9.2.1:6379",
                "--peer-addr",
                "127.9.2.1:7946",
                "--advertise-addr",
                "127.9.2.1:7946",
                "--peers",
                "127.9.2.101:7946",
                "--data-dir",
                "/tmp/f/us-0/data",
                "--max-memory",
                "64mb",
            ]
        );
        assert_eq!(p.nodes[1].log_file, Some(PathBuf::from("/tmp/f/us-0/node.log")));
    }

    #[test]
    fn a_single_node_has_no_seeds_and_no_links() {
        let p = plan(&options(&["--regions", "solo", "--nodes-per-region", "1"]));
        assert_eq!(p.nodes.len(), 1);
        assert!(p.links.is_empty());
        assert!(!p.nodes[0].args(&[]).iter().any(|a| a == "--peers"));
        assert_eq!(p.nodes[0].log_file, None);
        assert_eq!(p.nodes[0].data_dir, None);
    }
}
