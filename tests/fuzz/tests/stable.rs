//! The fuzz targets on the stable toolchain, so they run in `make test` and cannot rot:
//! every seed and every past finding in `fuzz/corpus/<target>/` (findings are kept
//! there as regression inputs), then random inputs, unstructured and shaped like each
//! target's input.

use std::path::PathBuf;

use fuzz_checks::TARGETS;
use proptest::prelude::*;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

#[test]
fn every_seed_and_past_finding_passes() {
    for (name, check) in TARGETS {
        let dir = corpus_dir(name);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", path.display());
            inputs += 1;
        }
        assert!(inputs >= 2, "{name}: the seed corpus has {inputs} inputs");
    }
}

/// Random bytes spliced into a seed: most random bytes are not JSON or TOML at all, so
/// mutating real inputs reaches further, as libFuzzer does.
fn mutated_seed(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir(target))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    (
        prop::sample::select(seeds),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(seed, at, cut, insert)| {
            let at = if seed.is_empty() {
                0
            } else {
                at.index(seed.len())
            };
            let end = (at + cut.index(8)).min(seed.len());
            let mut out = seed[..at].to_vec();
            out.extend(insert);
            out.extend(&seed[end..]);
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        for (_, check) in TARGETS {
            check(&data);
        }
    }

    #[test]
    fn mutated_order_requests(data in mutated_seed("order_request")) {
        fuzz_checks::order_request(&data);
    }

    #[test]
    fn mutated_events(data in mutated_seed("event_envelope")) {
        fuzz_checks::event_envelope(&data);
    }

    #[test]
    fn mutated_mail_responses(data in mutated_seed("mail_response")) {
        fuzz_checks::mail_response(&data);
    }

    #[test]
    fn mutated_manifests(data in mutated_seed("app_manifest")) {
        fuzz_checks::app_manifest(&data);
    }

    #[test]
    fn mutated_runtime_configs(data in mutated_seed("runtime_config")) {
        fuzz_checks::runtime_config(&data);
    }

    #[test]
    fn mutated_routes(data in mutated_seed("route")) {
        fuzz_checks::route(&data);
    }
}
