//! The kernel program against its plain-Rust model (`tests::model`): a seeded differential run
//! over generated policies and structure-aware frames, and every regression case a longer run
//! (`cargo xtask fuzz dataplane`) found.

use tests::{
    bpf_available,
    differential::{Totals, regressions, replay, run_policy},
};

#[test]
#[ignore = "needs root and BPF"]
fn generated_frames_agree_with_the_model() {
    if !bpf_available() {
        return;
    }
    // More with VOIPWALL_DP_POLICIES, another start with VOIPWALL_DP_SEED.
    let policies: u64 = std::env::var("VOIPWALL_DP_POLICIES").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let seed: u64 = std::env::var("VOIPWALL_DP_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let mut totals = Totals::default();
    // As many again with tight limits: the stateful paths as sequences.
    for i in 0..2 * policies {
        let tight = (i >= policies).then_some(true);
        if let Err(case) = run_policy(seed * 1000 + i, 4000, tight, &mut totals) {
            panic!(
                "the kernel and the model differ (policy seed {}): {}\n{}",
                seed * 1000 + i,
                case.found,
                serde_json::to_string_pretty(&case).unwrap()
            );
        }
    }
    eprintln!(
        "figure: {} frames ({} sent by the host) over {} generated policies ({} with tight limits, {} frames), no difference; {} later fragments inherited; {} bans raised, {} peers learned: {:?}",
        totals.frames,
        totals.egress,
        totals.policies,
        totals.tight,
        totals.tight_frames,
        totals.inherited,
        totals.bans_raised,
        totals.learned,
        totals.by_reason
    );
    assert!(totals.inherited > 0, "no later fragment followed a first one");
    assert!(totals.bans_raised > 0, "no rate level or User-Agent check raised a ban");
    assert!(totals.learned > 0, "no source became a known peer");
    // The generator reaches every step of the chain the model covers.
    for r in [
        "non_ip",
        "malformed",
        "allow_list",
        "block_list",
        "banned",
        "fragment_orphan",
        "protocol_closed",
        "icmp",
        "icmp_denied",
        "port_closed",
        "source_not_allowed",
        "port_open",
        "sip_user_agent",
        "sip_evasion",
        "return_traffic",
        "rate_limited",
        "unknown_over_budget",
        "icmp_rate_limited",
        "sip_method_rate_limited",
    ] {
        assert!(totals.by_reason.get(r).copied().unwrap_or(0) > 0, "no frame reached {r}: {:?}", totals.by_reason);
    }
}

#[test]
#[ignore = "needs root and BPF"]
fn regression_cases_agree_with_the_model() {
    if !bpf_available() {
        return;
    }
    for (name, case) in regressions() {
        if let Some((i, what)) = replay(&case) {
            panic!("regression case {name}: frame {i} differs: {what}");
        }
    }
}
