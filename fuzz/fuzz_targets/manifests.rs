//! The manifest compiler, as `rauta run --config` and `check-config` use
//! it: one file's text through the YAML/JSON reader, beside the example
//! manifests, then compiled for the default GatewayClass both ways (a
//! directory's all-or-nothing, a cluster's leave-it-out). A bad manifest
//! must be an error naming what is wrong, never a panic; what compiles
//! must serve a request without one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rauta_controlplane::{compile, Manifests, OnInvalid, Selection};
use std::path::Path;

const EXAMPLES: [(&str, &str); 4] = [
    (
        "gateway.yaml",
        include_str!("../../examples/gateway/gateway.yaml"),
    ),
    (
        "backends.yaml",
        include_str!("../../examples/gateway/backends.yaml"),
    ),
    (
        "policy.yaml",
        include_str!("../../examples/gateway/policy.yaml"),
    ),
    (
        "routes.yaml",
        include_str!("../../examples/gateway/routes.yaml"),
    ),
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut manifests = Manifests::default();
    for (name, example) in EXAMPLES {
        manifests
            .add_text(Path::new(name), example)
            .expect("the examples parse");
    }
    if let Err(error) = manifests.add_text(Path::new("fuzzed.yaml"), text) {
        assert!(!error.to_string().is_empty());
        return;
    }
    for on_invalid in [OnInvalid::RejectAll, OnInvalid::Exclude] {
        match compile(&manifests, &Selection::default(), on_invalid) {
            Ok(compiled) => {
                for port in compiled.config.ports.keys() {
                    let _ = compiled.config.listener(*port, "example.com");
                }
            }
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }
});
