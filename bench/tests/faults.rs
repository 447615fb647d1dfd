//! The fault suite's smoke version, with the debug binaries: a resolver SIGKILLed every 2 s,
//! nats-server restarted (SIGTERM, then SIGKILL), a directory and an S3 store out for a few
//! seconds, a rolling restart (each gateway and each resolver in turn: SIGTERM, exit, a
//! replacement), and the leaf node of resolvers behind one killed and restarted. No accepted
//! request may be lost or answered twice.

use imgfetch_bench::faults::{self, Fault, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_lost_or_answered_twice_through_kills_restarts_and_store_outages() {
    let out = tempfile::tempdir().unwrap();
    let options = Options {
        faults: vec![
            Fault::ResolverKill,
            Fault::NatsRestart,
            Fault::DirOutage,
            Fault::S3Outage,
            Fault::RollingRestart,
            Fault::LeafRestart,
        ],
        all: false,
        smoke: true,
        bin_dir: Some(imgfetch_bench::procs::test_bin_dir()),
        json: out.path().join("faults.json"),
        markdown: None,
        log_dir: Some(out.path().join("logs")),
        write_corpus: None,
        external: Default::default(),
    };
    let reports = faults::run(&options).await.unwrap();
    assert_eq!(reports.len(), 6);
    let mut failed = Vec::new();
    for r in &reports {
        // The load really ran, and the system served through and after the fault.
        assert!(r.accepted > 20, "{}: only {} accepted", r.fault, r.accepted);
        assert!(r.ok > 0, "{}: no image at all", r.fault);
        if r.lost != 0 || r.duplicated != 0 || !r.failures.is_empty() {
            failed.push(faults::table::text(r));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
