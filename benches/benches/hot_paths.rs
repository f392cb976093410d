//! Micro-benchmarks of the hot paths: frame encode/decode, scheduler
//! decisions with 1,000 workers, the word-count tokenizer and counter.
//! `cargo bench -p ringleader-benches`.
#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringleader::core::{Command, JobPlan, PendingShard, Scheduler, ShardKey, TaskFailure};
use ringleader::wire::{self, Assignment, ToWorker};
use serde_bytes::ByteBuf;

fn frames(c: &mut Criterion) {
    let a = ToWorker::Assign(Assignment {
        epoch: 7,
        job_id: "job".into(),
        incarnation: 0x1234_5678_9abc_def0,
        job_name: "word-count".into(),
        shard: ShardKey {
            index: 1,
            generation: 0,
        },
        attempt: 1,
        tasks: (0..100)
            .map(|i| (i, ByteBuf::from(vec![7u8; 100])))
            .collect(),
        ack_first: false,
        priority: 3,
    });
    let mut buf = Vec::new();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(100));
    g.bench_function("encode assign of 100 tasks", |b| {
        b.iter(|| {
            buf.clear();
            wire::encode_into(&mut buf, black_box(&a)).unwrap();
        })
    });
    wire::encode_into(&mut buf, &a).unwrap();
    g.bench_function("decode assign of 100 tasks", |b| {
        b.iter(|| wire::decode_frame::<ToWorker>(black_box(&buf[4..])).unwrap())
    });
    g.finish();
}

fn scheduler(c: &mut Criterion) {
    c.bench_function("scheduler: assign 10k shards over 1000 workers", |b| {
        b.iter(|| {
            let mut s = Scheduler::new();
            for w in 0..1000 {
                s.add_worker(&format!("w{w}"), 10, ["j".to_string()], false);
            }
            s.add_job(one_task_shards(10_000));
            black_box(s.assign(std::time::Instant::now()).len())
        })
    });
}

/// Job `x` of `shards` shards of one task each.
fn one_task_shards(shards: u32) -> JobPlan {
    let pending = (0..shards)
        .map(|i| PendingShard {
            key: ShardKey {
                index: i,
                generation: 0,
            },
            tasks: vec![u64::from(i)],
            attempt: 1,
        })
        .collect();
    JobPlan {
        shard_timeout: None,
        id: "x".into(),
        incarnation: 1,
        name: "j".into(),
        max_attempts: 3,
        counters: ringleader::core::Counters {
            tasks_total: u64::from(shards),
            ..Default::default()
        },
        pending,
        priority: 0,
        fairness: String::new(),
        not_before: None,
        under: Vec::new(),
    }
}

/// A scheduler holding one job of `shards` one-task shards, two workers of
/// one slot each busy, and a hundred retries in backoff.
fn busy_scheduler(shards: u32) -> (Scheduler, std::time::Instant) {
    let now = std::time::Instant::now();
    let mut s = Scheduler::new();
    s.add_worker("w0", 1, ["j".to_string()], false);
    s.add_worker("w1", 1, ["j".to_string()], false);
    s.add_job(one_task_shards(shards));
    // A hundred shards fail once: their retries wait out a backoff.
    for _ in 0..50 {
        for cmd in s.assign(now) {
            if let Command::Assign {
                worker, job, shard, ..
            } = cmd
            {
                s.report(&worker, (&job, 1), shard.key, shard.attempt, now);
                let failures = [TaskFailure {
                    index: shard.tasks[0],
                    error: "e".into(),
                    attempt: 1,
                    retryable: true,
                }];
                s.committed(&job, shard.key, shard.attempt, &failures, now);
            }
        }
    }
    (s, now)
}

/// What the master asks of the scheduler per shard at shard size 1: a
/// report, its commit, the next assignment, when to wake up, and (every
/// 250 ms, here every time) whether anything needs a copy. Flat in the
/// job's size means O(log n) or better per event.
fn scheduler_per_shard(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler: one shard's events in a job of");
    for shards in [10_000u32, 100_000, 1_000_000] {
        let start = |shards| {
            let (mut s, now) = busy_scheduler(shards);
            let running: Vec<(String, String, PendingShard)> = s
                .assign(now)
                .into_iter()
                .filter_map(|c| match c {
                    Command::Assign {
                        worker, job, shard, ..
                    } => Some((worker, job, shard)),
                    _ => None,
                })
                .collect();
            (s, now, running)
        };
        let mut state = start(shards);
        g.bench_function(format!("{shards} shards"), |b| {
            b.iter_custom(|iters| {
                let mut spent = std::time::Duration::ZERO;
                for _ in 0..iters {
                    if state.2.is_empty() {
                        // The job ran out: a fresh one, outside the clock.
                        state = start(shards);
                    }
                    let (s, now, running) = &mut state;
                    let now = *now;
                    let t = std::time::Instant::now();
                    if let Some((worker, job, shard)) = running.pop() {
                        s.started(&worker, (&job, 1), shard.key, shard.attempt, now);
                        s.report(&worker, (&job, 1), shard.key, shard.attempt, now);
                        s.committed(&job, shard.key, shard.attempt, &[], now);
                        for cmd in s.assign(now) {
                            if let Command::Assign {
                                worker, job, shard, ..
                            } = cmd
                            {
                                running.push((worker, job, shard));
                            }
                        }
                        black_box(s.next_due(now));
                        black_box(s.speculate(now).len());
                    }
                    spent += t.elapsed();
                }
                spent
            })
        });
    }
    g.finish();
}

/// A scheduler of 10,000 one-slot workers and 1,000 jobs, one per
/// fairness key (weights 1 to 4), over the ten priorities, holding
/// `shards` one-task shards in all; every worker's window full.
fn fair_scheduler(shards: u32) -> (Scheduler, std::time::Instant, Vec<Running>) {
    let now = std::time::Instant::now();
    let mut s = Scheduler::new();
    let jobs = 1_000u32;
    for j in 0..jobs {
        let key = format!("client:k{j}");
        s.set_weight(&key, 1 + j % 4);
        let mut plan = one_task_shards(shards / jobs);
        plan.id = format!("j{j}");
        plan.priority = (j % 10) as u8;
        plan.fairness = key;
        s.add_job(plan);
    }
    for w in 0..10_000 {
        s.add_worker(&format!("w{w}"), 1, ["j".to_string()], false);
    }
    let running = running(s.assign(now));
    (s, now, running)
}

/// A placed run: worker, job, shard.
type Running = (String, String, PendingShard);

fn running(cmds: Vec<Command>) -> Vec<Running> {
    cmds.into_iter()
        .filter_map(|c| match c {
            Command::Assign {
                worker, job, shard, ..
            } => Some((worker, job, shard)),
            _ => None,
        })
        .collect()
}

/// The same events per shard with priorities and fairness keys: 10,000
/// workers, 1,000 keys over ten priorities, and 100,000 to 1,000,000
/// shards (40,000 of them held by the workers, the rest queued). Flat in
/// the shards queued means O(log n) per event.
fn scheduler_fair_per_shard(c: &mut Criterion) {
    let mut g = c.benchmark_group(
        "scheduler: one shard's events, 10,000 workers, 1,000 keys, 10 priorities, queued",
    );
    g.sample_size(20);
    for shards in [100_000u32, 300_000, 1_000_000] {
        let mut state = fair_scheduler(shards);
        g.bench_function(format!("{shards} shards"), |b| {
            b.iter_custom(|iters| {
                let mut spent = std::time::Duration::ZERO;
                for _ in 0..iters {
                    if state.2.is_empty() {
                        state = fair_scheduler(shards);
                    }
                    let (s, now, running_now) = &mut state;
                    let now = *now;
                    let t = std::time::Instant::now();
                    if let Some((worker, job, shard)) = running_now.pop() {
                        s.started(&worker, (&job, 1), shard.key, shard.attempt, now);
                        s.report(&worker, (&job, 1), shard.key, shard.attempt, now);
                        s.committed(&job, shard.key, shard.attempt, &[], now);
                        running_now.extend(running(s.assign(now)));
                        black_box(s.next_due(now));
                    }
                    spent += t.elapsed();
                }
                spent
            })
        });
    }
    g.finish();
}

fn counting(c: &mut Criterion) {
    let mut text = String::new();
    for i in 0..200_000 {
        text.push_str(&wordcount::corpus::word(i % 5000));
        text.push(' ');
    }
    let mut g = c.benchmark_group("word count");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("count_str", |b| {
        b.iter(|| {
            let mut counts = wordcount::Counts::default();
            wordcount::count_str(black_box(&text), false, &mut counts);
            counts.len()
        })
    });
    // The baseline in the same run: what count_str replaced (decode every
    // character, SipHash, a heap String per distinct word).
    g.bench_function("split(char::is_whitespace) + HashMap<String>", |b| {
        b.iter(|| {
            let mut counts: std::collections::HashMap<String, u64> =
                std::collections::HashMap::new();
            for w in black_box(&text)
                .split(char::is_whitespace)
                .filter(|w| !w.is_empty())
            {
                match counts.get_mut(w) {
                    Some(c) => *c += 1,
                    None => {
                        counts.insert(w.to_string(), 1);
                    }
                }
            }
            counts.len()
        })
    });
    g.finish();
}

/// What the master does per word-count shard: merge a partial of 100,000
/// distinct words, beside the in-process merge the plain threads do.
fn partials(c: &mut Criterion) {
    use ringleader::Job;
    let partial = |seed: u64| {
        let mut counts = wordcount::Counts::default();
        for i in 0..100_000u64 {
            counts.insert(wordcount::corpus::word(i as usize).into(), i ^ seed);
        }
        counts
    };
    let base = partial(1);
    let other = partial(2);
    let bytes = rmp_serde::to_vec(&other).expect("encodes");
    let mut g = c.benchmark_group("word-count partial of 100k words");
    g.sample_size(20);
    g.bench_function("encode (worker)", |b| {
        b.iter(|| rmp_serde::to_vec(black_box(&other)).map(|v| v.len()))
    });
    g.bench_function("decode and merge_from (master)", |b| {
        b.iter_batched(
            || base.clone(),
            |mut acc| {
                let mut de = rmp_serde::Deserializer::from_read_ref(black_box(&bytes[..]));
                wordcount::WordCount::merge_from(&mut acc, &mut de).map(|()| acc.len())
            },
            criterion::BatchSize::LargeInput,
        )
    });
    // What a client does with a result of that size (merging it into an
    // empty map instead was no faster: 7.6 against 7.9 ms).
    g.bench_function("decode whole (client)", |b| {
        b.iter(|| {
            rmp_serde::from_slice::<wordcount::Counts>(black_box(&bytes[..])).map(|c| c.len())
        })
    });
    g.bench_function("merge in memory (the threads' baseline)", |b| {
        b.iter_batched(
            || (base.clone(), other.clone()),
            |(mut acc, o)| {
                wordcount::merge(&mut acc, o);
                acc.len()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    frames,
    scheduler,
    scheduler_per_shard,
    scheduler_fair_per_shard,
    counting,
    partials
);
criterion_main!(benches);
