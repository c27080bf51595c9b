//! `leadscore demo` end to end on the in-process mock broker: traffic is generated, consumed,
//! scored and published, with the HTTP endpoints up.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use leadscore::demo::{run, DemoOptions, EXAMPLE_MODEL};
use leadscore::model::Model;

#[test]
fn demo_scores_generated_traffic_and_stops_cleanly() {
    let model = Arc::new(Model::from_toml(EXAMPLE_MODEL).expect("built-in model is valid"));
    let opts = DemoOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate_per_s: 2000.0,
        leads: 500,
        status_every_s: 2,
        duration: Some(Duration::from_secs(8)),
    };
    let report = run(opts, model, Arc::new(AtomicBool::new(false))).expect("demo runs");
    let events = report.status["events_total"].as_u64().unwrap();
    let rejected = report.status["rejected_total"].as_u64().unwrap();
    assert!(report.generated > 2000, "generated only {}", report.generated);
    // Everything generated before the last commit was consumed; allow the last instants.
    assert!(events + rejected > report.generated / 2, "{events} + {rejected} of {} consumed", report.generated);
    assert!(report.status["tracked_leads"].as_u64().unwrap() > 100);
    assert!(report.status["transitions_total"].as_u64().unwrap() > 0, "no lead qualified: {}", report.status);
    assert!(rejected > 0, "the generator's malformed records were not rejected");
}
