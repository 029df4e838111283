//! The cluster under simulation (`baton_sim::cluster`): 8 and 32 nodes
//! sharing one site's connection limit and message rate through the model
//! of Redis, with node crashes and Redis outages, keep to the limit, lose
//! and repeat no message; with limits not binding, throughput grows with
//! the nodes.

use baton_sim::cluster::{run_cluster, ClusterParams};

fn params(seed: u64, nodes: usize) -> ClusterParams {
    ClusterParams {
        seed,
        nodes,
        sim_seconds: 60,
        per_node_rate: 800 / nodes as u64,
        connections_max: 20,
        message_rate_max: 400,
        faults: true,
    }
}

#[test]
fn eight_nodes_keep_to_the_sites_limits_through_crashes_and_outages() {
    let mut crashes = 0;
    let mut outages = 0;
    for seed in 1..=6 {
        let report = run_cluster(&params(seed, 8)).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.connections_peak <= 20, "{report:?}");
        // The limit was reached: the check was not idle.
        assert!(report.connections_peak >= 15, "{report:?}");
        crashes += report.crashes;
        outages += report.outages;
    }
    assert!(crashes > 0 && outages > 0, "no fault in 6 seeds");
}

#[test]
fn thirty_two_nodes_keep_to_the_sites_limits_through_crashes_and_outages() {
    for seed in 1..=3 {
        let report = run_cluster(&params(seed, 32)).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.connections_peak <= 20, "{report:?}");
    }
}

#[test]
fn with_limits_not_binding_throughput_grows_with_the_nodes() {
    let rate = |nodes: usize| {
        let report = run_cluster(&ClusterParams {
            seed: 1,
            nodes,
            sim_seconds: 10,
            per_node_rate: 500,
            connections_max: 100_000,
            message_rate_max: 0,
            faults: false,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            (report.redis_calls as f64) < 0.01 * report.delivered as f64,
            "{report:?}"
        );
        report.traffic_rate
    };
    let one = rate(1);
    for nodes in [4, 16] {
        let many = rate(nodes);
        let ratio = many / one / nodes as f64;
        assert!(
            (0.95..=1.05).contains(&ratio),
            "{nodes} nodes: {many}/s, one: {one}/s"
        );
    }
}
