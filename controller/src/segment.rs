//! Splitting a plan among agents: each agent gets a contiguous share of every group, sized by
//! its weight (its capacity). A local run is the one-agent case: segment 0 of 1, the same code.

use squall_proto::plan::{Assignment, GroupAssignment};

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
            max_duration_ms: plan.max_duration.as_millis().max(1) as u64,
            // set by the link, which knows the agent's clock
            clock_offset_ns: 0,
        })
        .collect();
    let mut stream_base = 0u32;
    let mut client_base = 0u32;
    for g in &plan.groups {
        let n = g.clients as u64;
        let mut acc_w = 0u64;
        for (i, w) in weights.iter().enumerate() {
            // boundaries at floor(n × cumulative weight / total): contiguous, no gaps, no overlap
            let first = (n * acc_w / total_w) as u32;
            acc_w += *w as u64;
            let end = (n * acc_w / total_w) as u32;
            if end > first {
                out[i].groups.push(GroupAssignment {
                    spec: g.clone(),
                    first,
                    count: end - first,
                    stream_base,
                    client_base,
                });
            }
        }
        if g.publish.is_some() {
            stream_base += g.clients;
        }
        client_base += g.clients;
    }
    out
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
    fn one_agent_gets_everything() {
        let p = plan(&[10, 5]);
        let a = segment(&p, &[], &[1]);
        assert_eq!(a.len(), 1);
        let g: Vec<_> =
            a[0].groups.iter().map(|g| (g.first, g.count, g.stream_base, g.client_base)).collect();
        assert_eq!(g, vec![(0, 10, 0, 0), (0, 5, 10, 10)]);
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
            for (agent, w) in a.iter().zip(&weights) {
                if *w == 0 {
                    prop_assert!(agent.groups.is_empty());
                }
            }
        }
    }
}
