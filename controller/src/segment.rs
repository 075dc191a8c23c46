//! Splitting a plan among agents: each agent gets a contiguous share of every group, sized by
//! its weight (its capacity). A local run is the one-agent case: segment 0 of 1, the same code.
//!
//! The rule is k6's execution segments: agent k owns the segment `[from, to)` of the unit
//! interval (its cumulative weight over the total) and gets `round(N·to) − round(N·from)` of a
//! group of N clients. Shares add up to N exactly, are contiguous index ranges (so `{i}` and
//! client ids never collide), and differ from the exact proportion by less than one client. A
//! group smaller than the number of agents lands whole-client on some of them (one fan-out
//! publisher goes to exactly one agent); the others get none of it. Members of a shared
//! subscription spread the same way (the controller settles a share split over agents:
//! [`crate::shares`]). Rates follow
//! clients: a group's rate is spread over its clients, so an agent's share of the rate is its
//! share of the clients and the shares sum to the group's rate.

use squall_proto::plan::{Assignment, GroupAssignment, PublishRange};

use crate::scenario::Plan;

/// One [`Assignment`] per agent; `weights[i]` is agent `i`'s share (e.g. its core count).
pub fn segment(plan: &Plan, targets: &[squall_proto::target::TargetUrl], weights: &[u32]) -> Vec<Assignment> {
    let total_w: u64 = weights.iter().map(|w| *w as u64).sum::<u64>().max(1);
    let mut out: Vec<Assignment> = weights
        .iter()
        .enumerate()
        .map(|(i, _)| Assignment {
            run_tag: plan.run_tag,
            agent: i as u32,
            targets: targets.to_vec(),
            tls: plan.tls.clone(),
            source_addresses: plan.source_addresses.clone(),
            groups: Vec::new(),
            snapshot_interval_ms: plan.snapshot_interval.as_millis().max(1) as u64,
            max_connecting: plan.max_connecting,
            adaptive_connecting: plan.adaptive_connecting,
            max_unsent_bytes: plan.max_unsent_bytes,
            publish_ranges: Vec::new(),
            timer_coalesce_us: plan.timer_coalesce.as_micros() as u32,
            read_coalesce_us: plan.read_coalesce.as_micros() as u32,
            max_duration_ms: plan.max_duration.as_millis().max(1) as u64,
            // set by the link, which knows the agent's clock
            clock_offset_ns: 0,
            staged: plan.shape.staged(),
        })
        .collect();
    let mut stream_base = 0u32;
    let mut client_base = 0u32;
    let mut publish_ranges = Vec::new();
    for (index, g) in plan.groups.iter().enumerate() {
        let n = g.clients as u64;
        // each agent's [first, end) of the group; a shared subscription's members spread like
        // any other clients (the controller settles a share split over agents)
        let mut acc_w = 0u64;
        let ranges: Vec<(usize, u32, u32)> = (0..weights.len())
            .map(|i| {
                let first = round_share(n, acc_w, total_w);
                acc_w += weights[i] as u64;
                (i, first, round_share(n, acc_w, total_w))
            })
            .collect();
        for (i, first, end) in ranges {
            if end > first {
                // only this agent's rows of the group's identities
                let identities = plan
                    .identities
                    .get(index)
                    .and_then(|ids| ids.as_ref())
                    .map(|ids| ids[first as usize..end as usize].to_vec())
                    .unwrap_or_default();
                out[i].groups.push(GroupAssignment {
                    spec: g.clone(),
                    first,
                    count: end - first,
                    stream_base,
                    client_base,
                    group: index as u32,
                    identities,
                });
            }
        }
        if g.publish.is_some() {
            publish_ranges.push(PublishRange { stream_base, clients: g.clients, group: index as u32 });
            stream_base += g.clients;
        }
        client_base += g.clients;
    }
    for a in &mut out {
        a.publish_ranges = publish_ranges.clone();
    }
    out
}

/// `round(n × num / den)`, halves up, in integers: k6's segment boundary.
fn round_share(n: u64, num: u64, den: u64) -> u32 {
    ((2 * n * num + den) / (2 * den)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Overrides, Source, load_source};
    use proptest::prelude::*;

    fn plan(clients: &[u32]) -> Plan {
        let mut text = String::new();
        for (i, c) in clients.iter().enumerate() {
            text += &format!(
                "[[group]]\nname = \"g{i}\"\nclients = {c}\n[group.publish]\ntopic = \"t/{{i}}\"\ninterval = \"1s\"\n"
            );
        }
        load_source(&Source::new("p.toml", text), &Overrides::default()).unwrap()
    }

    #[test]
    fn memory_estimates_count_connections_payloads_and_in_flight_copies() {
        let text = "[[group]]\nname = \"big\"\nclients = 1000\nmax_inflight = 16\n[group.publish]\ntopic = \"t/{i}\"\nqos = 1\npayload_size = 1000000\ninterval = \"1s\"\n\
                    [[group]]\nname = \"subs\"\nclients = 10\n[group.subscribe]\nfilters = [\"t/+\"]\n";
        let p = load_source(&Source::new("m.toml", text.to_string()), &Overrides::default()).unwrap();
        let a = segment(&p, &[], &[1, 1]);
        // 500 publishers × (4 KiB + 1 MB × (1 + 16)), 5 subscribers × 4 KiB
        assert_eq!(a[0].memory_estimate(), 500 * (4096 + 17_000_000) + 5 * 4096);
        assert_eq!(a[0].memory_estimate() + a[1].memory_estimate(), 1000 * (4096 + 17_000_000) + 10 * 4096);
    }

    #[test]
    fn one_agent_gets_everything() {
        let p = plan(&[10, 5]);
        let a = segment(&p, &[], &[1]);
        assert_eq!(a.len(), 1);
        let g: Vec<_> =
            a[0].groups.iter().map(|g| (g.first, g.count, g.stream_base, g.client_base)).collect();
        assert_eq!(g, vec![(0, 10, 0, 0), (0, 5, 10, 10)]);
    }

    fn shares(clients: u32, weights: &[u32]) -> Vec<u32> {
        let p = plan(&[clients]);
        segment(&p, &[], weights).iter().map(|a| a.groups.first().map(|g| g.count).unwrap_or(0)).collect()
    }

    #[test]
    fn shares_follow_k6_rounding() {
        // 10 clients over 3 equal agents: round(10/3)=3, round(20/3)=7, 10 → 3, 4, 3
        assert_eq!(shares(10, &[1, 1, 1]), vec![3, 4, 3]);
        // a single fan-out publisher goes whole to the agent whose segment covers ½
        assert_eq!(shares(1, &[1, 1, 1]), vec![0, 1, 0]);
        assert_eq!(shares(1, &[1, 1]), vec![1, 0]);
        // two clients, four agents: boundaries round(2·k/4) = 0, 1, 1, 2, 2
        assert_eq!(shares(2, &[1, 1, 1, 1]), vec![1, 0, 1, 0]);
        // weights: 2 cores against 1
        assert_eq!(shares(9, &[2, 1]), vec![6, 3]);
    }

    #[test]
    fn a_shared_subscription_group_spreads_over_agents_like_any_other() {
        let text = "[[group]]\nname = \"pub\"\nclients = 6\n[group.publish]\ntopic = \"t/{i}\"\ninterval = \"1s\"\n\
                    [[group]]\nname = \"workers\"\nclients = 5\n[group.subscribe]\nfilters = [\"$share/w/t/+\"]\n";
        let p = load_source(&Source::new("p.toml", text), &Overrides::default()).unwrap();
        let a = segment(&p, &[], &[1, 2, 2]);
        let workers: Vec<u32> = a
            .iter()
            .map(|a| a.groups.iter().filter(|g| g.spec.name == "workers").map(|g| g.count).sum())
            .collect();
        // boundaries round(5·k/5) = 0, 1, 3, 5
        assert_eq!(workers, vec![1, 2, 2]);
        let split: Vec<bool> = a.iter().map(|a| a.groups.iter().any(|g| g.splits_a_share())).collect();
        assert_eq!(split, vec![true, true, true]);
        // on one agent, the share is whole: settled there
        let one = segment(&p, &[], &[1]);
        assert!(!one[0].groups.iter().any(|g| g.splits_a_share()));
        // the publishers still spread
        let pubs: Vec<u32> = a
            .iter()
            .map(|a| a.groups.iter().filter(|g| g.spec.name == "pub").map(|g| g.count).sum())
            .collect();
        assert_eq!(pubs, vec![1, 3, 2]);
    }

    #[test]
    fn equal_groups_split_alike_so_pairs_stay_on_one_agent() {
        // publisher i and subscriber i of equal-size groups land on the same agent
        let p = plan(&[7, 7]);
        for agent in segment(&p, &[], &[3, 1, 2]) {
            let ranges: Vec<(u32, u32)> = agent.groups.iter().map(|g| (g.first, g.count)).collect();
            assert!(ranges.len() == 2 && ranges[0] == ranges[1], "{ranges:?}");
        }
    }

    proptest! {
        /// Segments cover every client of every group exactly once, whatever the weights.
        #[test]
        fn segments_cover_without_overlap(clients in proptest::collection::vec(1u32..500, 1..4),
                                          weights in proptest::collection::vec(0u32..8, 1..6)) {
            prop_assume!(weights.iter().any(|w| *w > 0));
            let p = plan(&clients);
            let a = segment(&p, &[], &weights);
            for (gi, n) in clients.iter().enumerate() {
                let mut covered = vec![0u8; *n as usize];
                for agent in &a {
                    for g in agent.groups.iter().filter(|g| g.spec.name == format!("g{gi}")) {
                        for c in g.first..g.first + g.count {
                            covered[c as usize] += 1;
                        }
                    }
                }
                prop_assert!(covered.iter().all(|c| *c == 1));
            }
            let total: u64 = weights.iter().map(|w| *w as u64).sum();
            for (agent, w) in a.iter().zip(&weights) {
                if *w == 0 {
                    prop_assert!(agent.groups.is_empty());
                }
                // within one client of the exact proportion
                for g in &agent.groups {
                    let exact = g.spec.clients as f64 * *w as f64 / total as f64;
                    prop_assert!((g.count as f64 - exact).abs() < 1.0 + 1e-9);
                }
            }
        }
    }
}
