//! The embedded object loads through the verifier, and every map and program name that `common`
//! declares exists in it (and nothing undeclared does, apart from aya-log's ring buffer).

use common::{maps, programs};
use tests::{Harness, bpf_available};
use voipwall::policy::DEFAULT_POLICY;

#[test]
#[ignore = "needs root and BPF"]
fn object_passes_the_verifier_and_declares_every_common_name() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(DEFAULT_POLICY);
    let (map_names, program_names) = h.dp.object_names();
    for name in maps::ALL {
        assert!(
            map_names.iter().any(|n| n == name),
            "map {name} from common is missing in the object; it has {map_names:?}"
        );
    }
    for name in programs::ALL {
        assert!(
            program_names.iter().any(|n| n == name),
            "program {name} from common is missing; object has {program_names:?}"
        );
    }
    for name in &map_names {
        assert!(
            maps::ALL.contains(&name.as_str()) || name == "AYA_LOGS" || name.starts_with('.'),
            "map {name} in the object is not declared in common::maps"
        );
    }
}
