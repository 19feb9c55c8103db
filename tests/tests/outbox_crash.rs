//! SIGKILL the outbox-torture child at random moments, at least 20 times,
//! and check after each kill that every append it reported is present
//! exactly once and in order, and that nothing acknowledged reappears.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::RngExt;
use schemas::Body;
use shipper::outbox::{Outbox, OutboxConfig};

const KILLS: usize = 24;

#[test]
fn sigkill_at_random_moments_loses_nothing_and_resurrects_nothing() {
    let dir = e2e::scratch();
    let path = dir.path().join("outbox");
    let mut rng = rand::rng();
    // Reported appends that are not yet known acknowledged: seq -> expected message.
    let mut expected: HashMap<u64, String> = HashMap::new();
    let mut reported_ack = 0u64;
    let mut total_appends = 0usize;
    for round in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_outbox-torture"))
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(40..400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["A", first, count, token] => {
                    let (first, count): (u64, u64) =
                        (first.parse().unwrap(), count.parse().unwrap());
                    for i in 0..count {
                        assert!(
                            expected.insert(first + i, format!("{token}-{i}")).is_none(),
                            "seq {} handed out twice",
                            first + i
                        );
                    }
                    total_appends += 1;
                }
                ["K", upto] => reported_ack = reported_ack.max(upto.parse().unwrap()),
                // The kill can cut the last line short; a partial line is not a report.
                _ => {}
            }
        }

        let ob = Outbox::open(&path, OutboxConfig::default()).unwrap();
        let acked = match ob.sink("s") {
            Some(sink) => sink.acked,
            // Killed before the child registered its sink (an early kill
            // while the machine is busy): nothing can be acknowledged yet.
            None => {
                assert_eq!(
                    reported_ack, 0,
                    "round {round}: the sink is gone after acknowledgements up to {reported_ack}"
                );
                0
            }
        };
        assert!(
            acked >= reported_ack,
            "round {round}: acknowledged cursor went back from {reported_ack} to {acked}"
        );
        let (present, quarantined) = e2e::read_all(&ob).unwrap();
        assert_eq!(quarantined, 0, "a clean kill must not corrupt records");
        let mut last = acked;
        for r in &present {
            assert!(
                r.seq > last,
                "round {round}: seq {} out of order or acknowledged (cursor {acked})",
                r.seq
            );
            last = r.seq;
        }
        let by_seq: HashMap<u64, &str> = present
            .iter()
            .map(|r| match &r.body {
                Body::Log(l) => (r.seq, l.message.as_str()),
                other => panic!("unexpected body {other:?}"),
            })
            .collect();
        expected.retain(|seq, _| *seq > acked);
        for (seq, msg) in &expected {
            assert_eq!(
                by_seq.get(seq).copied(),
                Some(msg.as_str()),
                "round {round}: reported append seq {seq} lost"
            );
        }
        assert_eq!(
            ob.stats().records,
            present.len() as u64,
            "round {round}: stats disagree with contents"
        );
    }
    assert!(
        total_appends > KILLS,
        "the child made too little progress to prove anything: {total_appends}"
    );
}
