//! Child process for the outbox crash test: appends from several threads and
//! acknowledges from another, forever, printing one line per operation that
//! returned (`A <first_seq> <count> <token>`, `K <upto>`). The test SIGKILLs
//! it at random moments and checks the outbox against what was printed.

use std::io::Write;
use std::sync::{Arc, Mutex};

use rand::RngExt;
use schemas::{Body, Level, LogBody, Record};
use shipper::outbox::{Outbox, OutboxConfig};

fn main() {
    let dir = std::env::args().nth(1).expect("usage: outbox-torture DIR");
    let ob = match Outbox::open(&dir, OutboxConfig::default()) {
        Ok(ob) => ob,
        Err(e) => {
            eprintln!("outbox-torture: {e}");
            std::process::exit(2);
        }
    };
    ob.register_sink("s").wait().expect("register sink");
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut threads = Vec::new();
    for _ in 0..4 {
        let (ob, out) = (ob.clone(), out.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = rand::rng();
            loop {
                let token: u64 = rng.random();
                let n = rng.random_range(1..40usize);
                let records: Vec<Record> = (0..n)
                    .map(|i| Record {
                        seq: 0,
                        ts: 0,
                        source: "torture".into(),
                        subscription: "t".into(),
                        body: Body::Log(LogBody {
                            level: Level::Info,
                            target: "torture".into(),
                            message: format!("{token:016x}-{i}"),
                            fields: Default::default(),
                        }),
                    })
                    .collect();
                let r = ob.append(&records).wait().expect("append");
                let mut o = out.lock().unwrap();
                writeln!(o, "A {} {} {token:016x}", r.first_seq, r.count).unwrap();
                o.flush().unwrap();
            }
        }));
    }
    let mut rng = rand::rng();
    let mut cursor = ob.sink("s").expect("registered").acked;
    loop {
        let b = ob
            .read(cursor, rng.random_range(1..200), usize::MAX)
            .expect("read");
        if b.records.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        }
        // Acknowledge a random prefix of what was read.
        let take = rng.random_range(1..=b.records.len());
        let upto = b.records[take - 1].seq;
        ob.ack("s", upto, 0).wait().expect("ack");
        cursor = upto;
        let mut o = out.lock().unwrap();
        writeln!(o, "K {upto}").unwrap();
        o.flush().unwrap();
    }
}
