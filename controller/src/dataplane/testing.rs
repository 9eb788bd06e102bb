//! Hooks for the test suite and the benchmarks (the `test-hooks` feature, which the release
//! binary does not enable): BPF_PROG_TEST_RUN on both programs, direct access to tables the
//! program writes, and the benchmark object.

use std::time::Duration;

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use common::{
    FlowKey, FragKey, FragState, PROTO_SLOT_TCP, PROTO_SLOT_UDP, SipPeer, SourceKey, flow_port_bit, maps, programs,
};

use super::{Dataplane, DataplaneError, MapOpError, Result, lookup, walk};

/// The benchmark programs (`xdp-ebpf/src/bench.rs`): the empty XDP_PASS baseline,
/// single-operation programs and the end-to-end generator.
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-bench"));

fn program<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a T>
where
    &'a T: TryFrom<&'a aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program(name).ok_or(DataplaneError::Program { name, detail: "missing from the object".into() })?;
    p.try_into().map_err(|e: aya::programs::ProgramError| DataplaneError::Program { name, detail: e.to_string() })
}

impl Dataplane {
    /// Run the XDP program once per `repeat` on `data` (BPF_PROG_TEST_RUN): the XDP action and
    /// the kernel's average duration per run.
    pub fn test_run(&self, data: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let prog: &Xdp = program(&self.ebpf, programs::INGRESS)?;
        let mut out = vec![0u8; data.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                repeat: repeat.max(1),
                ..Default::default()
            })
            .map_err(|e| DataplaneError::Program { name: programs::INGRESS, detail: format!("test_run: {e}") })?;
        Ok((r.return_value, r.duration))
    }

    /// Run the TC egress program once on `data`; its return code.
    pub fn test_run_egress(&self, data: &[u8]) -> Result<i32> {
        let prog: &SchedClassifier = program(&self.ebpf, programs::EGRESS)?;
        let mut out = vec![0u8; data.len() + 256];
        let r = prog
            .test_run(TestRunOptions { data_in: Some(data), data_out: Some(&mut out), repeat: 1, ..Default::default() })
            .map_err(|e| DataplaneError::Program { name: programs::EGRESS, detail: format!("test_run: {e}") })?;
        Ok(r.return_value as i32)
    }

    /// Map and program names present in the loaded object (for the object check).
    pub fn object_names(&self) -> (Vec<String>, Vec<String>) {
        (self.map_names.clone(), self.ebpf.programs().map(|(n, _)| n.to_string()).collect())
    }

    /// Every recorded outgoing flow.
    pub fn flows(&self) -> Result<Vec<(FlowKey, u64)>> {
        walk(&self.flows, maps::FLOWS)
    }

    /// Record a flow as if the egress program had, port bit included.
    pub fn flow_insert(&mut self, key: &FlowKey, seen_ns: u64) -> Result<()> {
        self.flows.insert(key, seen_ns, 0).map_err(MapOpError::on(maps::FLOWS, "insert"))?;
        let slot = if key.proto == 6 { PROTO_SLOT_TCP } else { PROTO_SLOT_UDP };
        let (word, bit) = flow_port_bit(slot, key.local_port);
        let w = self.flow_ports.get(&word, 0).map_err(MapOpError::on(maps::FLOW_PORTS, "read"))?;
        self.flow_ports.set(word, w | bit, 0).map_err(MapOpError::on(maps::FLOW_PORTS, "write"))?;
        Ok(())
    }

    /// A source's SIP authentication counters, if it has any.
    pub fn sip_peer(&self, key: &SourceKey) -> Result<Option<SipPeer>> {
        lookup(&self.sip_peers, maps::SIP_PEERS, key)
    }

    /// Every remembered first fragment.
    pub fn frags(&self) -> Result<Vec<(FragKey, FragState)>> {
        walk(&self.frags, maps::FRAGS)
    }
}
