//! The in-memory harness of `benches/core_instructions.rs`, without
//! valgrind: every pairing of client and backend protocol serves its
//! requests, all 200 with the body, none lost or repeated. Guards the
//! benchmark against measuring a gateway that fails.

#[path = "../benches/support/inmemory.rs"]
mod inmemory;

use inmemory::Pairing;
use rauta_dataplane::http2::Http2Settings;

#[test]
fn every_pairing_answers_every_request_with_200() {
    for pairing in Pairing::ALL {
        assert_eq!(Pairing::from_name(pairing.name()), Some(pairing));
        let summary = inmemory::run(pairing, 200);
        assert_eq!(summary.responses, 200, "{}", pairing.name());
        assert!(summary.rounds >= 1, "{}", pairing.name());
        // Keep-alive: no more backend connections than requests in
        // flight (HTTP/1.1) or than the h2c pool holds.
        let most = match pairing {
            Pairing::H1ToH1 => 1,
            Pairing::H2ToH1 => inmemory::H2_STREAMS_IN_FLIGHT,
            Pairing::H1ToH2c | Pairing::H2ToH2c => Http2Settings::default().backend_connections,
        };
        assert!(
            (1..=most).contains(&summary.backend_connections),
            "{}: {} backend connections for 200 requests",
            pairing.name(),
            summary.backend_connections
        );
    }
}
