//! The loopback subnets (`127.<subnet>.x.y`) of the mesh's tests, in one
//! table: each test binary runs its tests in parallel, and two tests on one
//! subnet would fight over the same addresses.

// Each test binary uses only some of this.
#![allow(dead_code)]

use std::{
    net::{SocketAddr, TcpListener},
    process::Child,
    time::{Duration, Instant},
};

use mesh::scenario::Options;

/// A scenario run as the tests run it: few calls, quiet, fixed pod names.
pub fn options(subnet: u8) -> Options {
    Options {
        calls: 9,
        pods: 3,
        subnet,
        all_lines: false,
        quiet: true,
        seed: 7,
    }
}

/// Ctrl-C to `child` (the mesh binary), which must exit within 10 s.
pub fn interrupt(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mesh ignored SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to 5 s: killed children release their sockets as they are
/// reaped) until every address can be bound again.
pub fn assert_all_free(addrs: &[SocketAddr]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for addr in addrs {
        while TcpListener::bind(addr).is_err() {
            assert!(Instant::now() < deadline, "{addr} still in use");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// (test, subnet). Not 10: `mesh demo`'s default, which a developer may be
/// running beside the tests.
pub const SUBNETS: &[(&str, u8)] = &[
    // scenarios.rs: one per scenario, by name.
    ("http-l4", 101),
    ("grpc-l4", 102),
    ("grpc-mesh", 103),
    ("one-per-conn", 104),
    ("reuse", 105),
    ("tight", 106),
    ("client-rr", 107),
    ("scale-out-l4", 111),
    ("scale-out-mesh", 112),
    ("scale-out-http", 113),
    ("pod-loss-l4", 114),
    ("pod-loss-mesh", 115),
    ("drain-mesh", 116),
    ("scale-out-rr", 117),
    ("max-age-l4", 118),
    ("http-mesh", 119),
    ("node-loss-mesh", 127),
    ("node-loss-l4", 128),
    ("cli: json run", 108),
    ("envoy_configs: address in use", 120),
    ("envoy_configs: refused plugin config", 121),
    ("churn: an event that cannot be applied", 122),
    ("churn: cluster DNS cannot bind", 123),
    ("churn: Ctrl-C mid scale-out", 124),
    ("churn: a passing run", 125),
    ("churn: a panic mid-run", 126),
    ("up: Ctrl-C", 130),
];

/// The subnet of test `key` in [`SUBNETS`].
pub fn subnet(key: &str) -> u8 {
    SUBNETS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, subnet)| *subnet)
        .unwrap_or_else(|| panic!("no subnet for {key:?}: add a row to mesh/tests/common/mod.rs"))
}

#[test]
fn test_subnets_are_distinct_and_not_the_demos() {
    let mut seen = std::collections::BTreeMap::new();
    for (key, subnet) in SUBNETS {
        assert_ne!(*subnet, mesh::topology::DEFAULT_SUBNET, "{key}");
        if let Some(other) = seen.insert(*subnet, *key) {
            panic!("{key} and {other} both use subnet {subnet}");
        }
    }
}
