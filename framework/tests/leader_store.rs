#![allow(clippy::unwrap_used)]
//! The master's fenced store against a real ZooKeeper: outcomes of
//! requests that race, driven in each order.

use std::time::Duration;

use ringleader::coord::{
    Amend, JobRecord, JobRef, JobStatus, Layout, LeaderStore, OutputRef, ResultRecord, Session,
    StoredJob,
};
use ringleader::core::Counters;
use ringleader::store::Store;
use ringleader::wire::JobOptions;
use ringleader::zkserver::{ZkServer, ZkServerOptions};
use serde_bytes::ByteBuf;

fn record() -> JobRecord {
    JobRecord {
        job_name: "j".into(),
        options: JobOptions {
            shard_size: 1,
            max_attempts: 1,
            shard_timeout_ms: None,
            stream: false,
            priority: 0,
            fairness_key: None,
            not_before_ms: None,
            under: Vec::new(),
        },
        tasks_total: 1,
        batches: 0,
        status: JobStatus::Writing,
        created_ms: 0,
        fetched_ms: None,
        digest: None,
        owner: None,
        inline: None,
        result: None,
        incarnation: INC,
        shape: None,
    }
}

/// The incarnation of the jobs these tests write.
const INC: u64 = 0xfeed;

/// A commit's job: `id` of incarnation [`INC`].
fn at(id: &str, compact: bool) -> JobRef<'_> {
    JobRef {
        id,
        incarnation: INC,
        compact,
    }
}

/// A master of a private ZooKeeper, and the directory it keeps.
fn with_master(test: impl AsyncFnOnce(LeaderStore)) {
    with_master_and_session(async |leader, _| test(leader).await)
}

/// [`with_master`], with the master's session (for writes a foreign
/// client could make).
fn with_master_and_session(test: impl AsyncFnOnce(LeaderStore, Session)) {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(&dir.path().join("zk"), &ZkServerOptions::default()).unwrap();
    let store = Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let session = Session::connect(
            &zk.connect_string(),
            Duration::from_secs(10),
            Layout::new("t"),
        )
        .await
        .unwrap();
        session.ensure_root().await.unwrap();
        let won = session.campaign("m").await.unwrap();
        let leader = LeaderStore::take_over(won, store).await.unwrap();
        leader
            .publish("m", "127.0.0.1:1", "leader-store-test")
            .await
            .unwrap();
        test(leader, session).await;
    });
}

async fn job(leader: &LeaderStore, id: &str) -> StoredJob {
    let tasks = [ByteBuf::from(vec![1u8])];
    leader.create_job(id, record(), &tasks).await.unwrap()
}

async fn status(leader: &LeaderStore, id: &str) -> JobStatus {
    leader.read_job(id).await.unwrap().unwrap().record.status
}

async fn result(leader: &LeaderStore, id: &str) -> Option<ResultRecord> {
    let job = leader.read_job(id).await.unwrap().unwrap();
    leader.read_result(&job).await.unwrap()
}

fn done() -> Counters {
    Counters {
        tasks_total: 1,
        tasks_done: 1,
        ..Counters::default()
    }
}

/// Cancel racing finish: whichever writes first wins; the other is
/// refused with a conflict and changes nothing. Neither a cancelled job
/// with a result nor a finished job marked cancelled (never collected).
#[test]
fn cancel_and_finish_racing_leave_one_outcome() {
    with_master(async |leader| {
        // The cancel first: the finish, from the record it read, is refused.
        let a = job(&leader, "a").await;
        leader.set_status(&a, JobStatus::Cancelled).await.unwrap();
        let err = leader
            .finish(&a, vec![7], Vec::new(), done(), false)
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err}");
        assert_eq!(status(&leader, "a").await, JobStatus::Cancelled);
        assert!(result(&leader, "a").await.is_none());

        // The finish first: the cancel, from the record it read, is refused.
        let b = job(&leader, "b").await;
        leader
            .finish(&b, vec![7], Vec::new(), done(), false)
            .await
            .unwrap();
        let err = leader
            .set_status(&b, JobStatus::Cancelled)
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err}");
        assert_eq!(status(&leader, "b").await, JobStatus::Done);
        assert_eq!(result(&leader, "b").await.unwrap().counters, done());

        // Both at once, from the same record read, sent in either order:
        // exactly one wins, and the job is as the winner left it.
        let (mut cancels, mut finishes) = (0, 0);
        for i in 0..20 {
            let id = format!("r{i}");
            let j = job(&leader, &id).await;
            let cancel = leader.set_status(&j, JobStatus::Cancelled);
            let finish = leader.finish(&j, vec![7], Vec::new(), done(), false);
            let (cancelled, finished) = if i % 2 == 0 {
                futures::join!(cancel, finish)
            } else {
                let (f, c) = futures::join!(finish, cancel);
                (c, f)
            };
            match (cancelled, finished) {
                (Ok(()), Err(e)) => {
                    assert!(e.is_conflict(), "{e}");
                    assert_eq!(status(&leader, &id).await, JobStatus::Cancelled);
                    assert!(result(&leader, &id).await.is_none());
                    cancels += 1;
                }
                (Err(e), Ok(_)) => {
                    assert!(e.is_conflict(), "{e}");
                    assert_eq!(status(&leader, &id).await, JobStatus::Done);
                    finishes += 1;
                }
                (c, f) => panic!("{id}: cancel {c:?}, finish {:?}", f.map(|_| ())),
            }
        }
        assert!(
            cancels > 0 && finishes > 0,
            "{cancels} cancels, {finishes} finishes won"
        );
    });
}

/// A compact job's small result goes in its record: its end is one
/// versioned set, with no `result` znode, and collecting it is one delete.
/// A write that applied and is sent again (its answer lost) is answered
/// with the end ZooKeeper holds, even where the retry's would differ; a
/// cancel that got there first is still a conflict. A result too big for
/// the record gets its own znode.
#[test]
fn a_compact_jobs_end_is_one_write_and_its_result_is_in_its_record() {
    with_master_and_session(async |leader, session| {
        let zk = session.zookeeper();
        let a = job(&leader, "a").await;
        assert!(a.record.is_compact());
        let before = leader.commit_transactions();
        let end = leader
            .finish(&a, vec![7], Vec::new(), done(), false)
            .await
            .unwrap();
        assert_eq!(leader.commit_transactions() - before, 1, "one write");
        assert_eq!(end.result.output, OutputRef::Inline(ByteBuf::from(vec![7])));
        assert!(!end.fetched);
        let stored = leader.read_job("a").await.unwrap().unwrap();
        assert_eq!(stored.record, end.record, "what ZooKeeper holds");
        assert_eq!(stored.record.status, JobStatus::Done);
        assert_eq!(stored.record.result.as_ref(), Some(&end.result));
        assert_eq!(
            leader.read_result(&stored).await.unwrap(),
            Some(end.result.clone())
        );
        let children = zk.list_children(&leader.layout().job("a")).await.unwrap();
        assert!(children.is_empty(), "no result znode: {children:?}");

        // Sent again from the record it was written from, with another
        // output and a fetched mark: answered with the stored end.
        let again = leader
            .finish(&a, vec![8], Vec::new(), done(), true)
            .await
            .unwrap();
        assert_eq!(again.result, end.result);
        assert!(!again.fetched, "the stored record is not marked fetched");
        assert_eq!(
            leader.read_job("a").await.unwrap().unwrap().record,
            end.record
        );

        // A cancel first: the end is refused, as before.
        let b = job(&leader, "b").await;
        leader.set_status(&b, JobStatus::Cancelled).await.unwrap();
        let err = leader
            .finish(&b, vec![7], Vec::new(), done(), false)
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err}");
        assert!(result(&leader, "b").await.is_none());

        // Too big for the record: a znode of its own.
        let c = job(&leader, "c").await;
        let big = vec![5u8; 20 * 1024];
        let end_c = leader
            .finish(&c, big.clone(), Vec::new(), done(), true)
            .await
            .unwrap();
        let stored_c = leader.read_job("c").await.unwrap().unwrap();
        assert!(stored_c.record.result.is_none());
        assert!(end_c.fetched && stored_c.record.fetched_ms.is_some());
        let children = zk.list_children(&leader.layout().job("c")).await.unwrap();
        assert_eq!(children, vec!["result".to_string()]);
        let read = leader.read_result(&stored_c).await.unwrap().unwrap();
        assert_eq!(leader.read_output(&read.output).await.unwrap(), big);

        // Collected: nothing is left of either.
        leader.collect(&[stored, stored_c], &[]).await.unwrap();
        assert_eq!(leader.list_job_ids().await.unwrap(), vec!["b".to_string()]);
    });
}

/// A compact job's end proposed while its create waits is what the create
/// writes: the job is created done, result and fetched mark in its record,
/// in one transaction. A create sent again after its answer was lost finds
/// its own write, ended or not; a create that went takes no proposal, and
/// a job of another submission under the id is not taken for this one.
#[test]
fn a_compact_jobs_create_may_be_its_end_until_it_is_sent() {
    with_master(async |leader| {
        let tasks = [ByteBuf::from(vec![1u8])];
        let a = leader.compact_job("a", record(), &tasks).unwrap();
        assert!(a.record.is_compact() && a.record.status == JobStatus::Accepted);
        let amend = Amend::default();
        let end = leader
            .propose_end(&amend, &a, vec![7], Vec::new(), done(), true)
            .unwrap()
            .expect("taken: the create has not gone");
        let before = leader.commit_transactions();
        let ended = leader
            .create_compact(&a, Some(amend.clone()))
            .await
            .unwrap();
        assert!(ended, "the end went in place of the create");
        assert_eq!(leader.commit_transactions() - before, 1, "one write");
        let stored = leader.read_job("a").await.unwrap().unwrap();
        assert_eq!(stored.record, end.record, "created as its end");
        assert_eq!(stored.record.status, JobStatus::Done);
        assert!(stored.record.fetched_ms.is_some() && end.fetched);
        assert_eq!(result(&leader, "a").await, Some(end.result.clone()));
        // Sealed: a later proposal is refused (the caller writes apart).
        let late = leader.propose_end(&amend, &a, vec![9], Vec::new(), done(), false);
        assert!(late.unwrap().is_none());

        // Sent again (its answer lost): the write found is its own, ended.
        let again = Amend::default();
        leader
            .propose_end(&again, &a, vec![7], Vec::new(), done(), true)
            .unwrap()
            .unwrap();
        assert!(leader.create_compact(&a, Some(again)).await.unwrap());

        // A create that went without a proposal: the job is only created,
        // and a resend finds it so.
        let b = leader.compact_job("b", record(), &tasks).unwrap();
        let plain = Amend::default();
        assert!(!leader
            .create_compact(&b, Some(plain.clone()))
            .await
            .unwrap());
        assert_eq!(status(&leader, "b").await, JobStatus::Accepted);
        assert!(!leader.create_compact(&b, None).await.unwrap());
        let late = leader.propose_end(&plain, &b, vec![7], Vec::new(), done(), false);
        assert!(late.unwrap().is_none(), "it went: no proposal is taken");

        // Another submission under a taken id is not this one's write,
        // ended or not, even in the same millisecond: each admission has an
        // incarnation of its own.
        for id in ["a", "b"] {
            let another = JobRecord {
                incarnation: INC + 1,
                ..record()
            };
            let other = leader.compact_job(id, another, &tasks).unwrap();
            let err = leader.create_compact(&other, None).await.unwrap_err();
            assert!(err.is_node_exists(), "{err}");
        }
        // A result too big for the record is not proposed.
        let c = leader.compact_job("c", record(), &tasks).unwrap();
        let big = leader.propose_end(
            &Amend::default(),
            &c,
            vec![5; 20 * 1024],
            Vec::new(),
            done(),
            true,
        );
        assert!(big.unwrap().is_none());
    });
}

/// A fetch whose job was collected between its read and its mark has
/// still delivered the result: marking it is not an error.
#[test]
fn marking_a_collected_job_fetched_is_not_an_error() {
    with_master(async |leader| {
        let a = job(&leader, "a").await;
        leader
            .finish(&a, vec![7], Vec::new(), done(), false)
            .await
            .unwrap();
        let finished = leader.read_job("a").await.unwrap().unwrap();
        leader.delete_tree(&leader.layout().job("a")).await.unwrap();
        assert!(leader.read_job("a").await.unwrap().is_none());
        leader.mark_fetched(&finished).await.unwrap();
        assert!(
            leader.read_job("a").await.unwrap().is_none(),
            "not recreated"
        );
    });
}

/// Commits that wait together go in few transactions, and one job's in
/// few commit records (znodes): each shard is read back once. A commit to
/// a job that is gone fails alone; the others of its batch stand. A shard
/// sent again (after an outcome its master did not learn) is held by two
/// records, and the first counts.
#[test]
fn concurrent_commits_share_transactions_and_records_and_fail_alone() {
    use ringleader::coord::ShardOutput;
    use ringleader::core::ShardKey;
    with_master_and_session(async |leader, session| {
        // A compact job (its records are its own children) and one of
        // bigger tasks (its records go to `done/<bucket>`).
        for (id, task_len, compact) in [("c", 1, true), ("n", 100, false)] {
            let tasks: Vec<ByteBuf> = (0..200u8)
                .map(|i| ByteBuf::from(vec![i; task_len]))
                .collect();
            let mut rec = record();
            rec.tasks_total = 200;
            let job = leader.create_job(id, rec, &tasks).await.unwrap();
            assert_eq!(job.record.is_compact(), compact, "{id}");
            let key = |index| ShardKey {
                index,
                generation: 0,
            };
            let first = leader
                .commit(
                    at(id, compact),
                    key(7),
                    1,
                    ShardOutput::Bytes(vec![1]),
                    Vec::new(),
                )
                .await
                .unwrap();
            let before = leader.commit_transactions();
            let commits = (0..200).map(|i| {
                let leader = leader.clone();
                async move {
                    let out = ShardOutput::Bytes(vec![2]);
                    (
                        i,
                        leader
                            .commit(at(id, compact), key(i), 2, out, Vec::new())
                            .await,
                    )
                }
            });
            let gone = (0..3).map(|i| {
                let leader = leader.clone();
                async move {
                    let out = ShardOutput::Bytes(vec![3]);
                    leader
                        .commit(at("gone", compact), key(i), 1, out, Vec::new())
                        .await
                }
            });
            let (outcomes, gone) = futures::join!(
                futures::future::join_all(commits),
                futures::future::join_all(gone)
            );
            let mut records = std::collections::BTreeSet::new();
            for (i, outcome) in outcomes {
                let c = outcome.unwrap_or_else(|e| panic!("{id}: shard {i}: {e}"));
                assert_eq!(c.record.attempt, 2);
                records.insert(c.at.to_string());
            }
            for g in gone {
                assert!(g.is_err(), "a commit to a job that is not there: {g:?}");
            }
            let sent = leader.commit_transactions() - before;
            assert!(
                (1..50).contains(&sent),
                "{id}: {sent} transactions for 203 commits"
            );
            let parent = match compact {
                true => leader.layout().job(id),
                false => format!("{}/done/0", leader.layout().job(id)),
            };
            let znodes = session.zookeeper().list_children(&parent).await.unwrap();
            let named: Vec<&String> = znodes.iter().filter(|n| n.starts_with('c')).collect();
            assert_eq!(named.len(), records.len() + 1, "{id}: {znodes:?}");
            assert!(
                records.len() < 50,
                "{id}: {} records for 200 commits",
                records.len()
            );
            let stored = leader.read_commits(&job).await.unwrap();
            assert_eq!(stored.len(), 200, "{id}: each shard read back once");
            assert_eq!(
                stored[&key(7)],
                first.record,
                "{id}: the first commit counts"
            );
            assert!(stored.iter().all(|(k, r)| *k == key(7) || r.attempt == 2));
        }
    });
}

/// Collection removes every znode of the jobs it is given, done or
/// cancelled, committed shards and all, in shared transactions; a znode
/// the layout does not name does not stop it.
#[test]
fn collection_leaves_nothing_of_its_jobs() {
    use ringleader::coord::ShardOutput;
    use ringleader::core::ShardKey;
    with_master_and_session(async |leader, session| {
        let key = ShardKey {
            index: 0,
            generation: 0,
        };
        let done_job = job(&leader, "d").await;
        assert!(done_job.record.is_compact());
        leader
            .commit(
                at("d", true),
                key,
                1,
                ShardOutput::Bytes(vec![1]),
                Vec::new(),
            )
            .await
            .unwrap();
        // A compact job's first lost run creates its `lost`.
        leader.record_loss("d", key, 2).await.unwrap();
        leader
            .finish(&done_job, vec![7], Vec::new(), done(), true)
            .await
            .unwrap();
        // A job of bigger tasks has batches, buckets and `lost` from the start.
        let mut rec = record();
        rec.tasks_total = 2;
        let tasks = [
            ByteBuf::from(vec![1u8; 9000]),
            ByteBuf::from(vec![2u8; 9000]),
        ];
        let cancelled = leader.create_job("c", rec, &tasks).await.unwrap();
        assert!(!cancelled.record.is_compact());
        leader
            .commit(
                at("c", false),
                key,
                1,
                ShardOutput::Bytes(vec![1]),
                Vec::new(),
            )
            .await
            .unwrap();
        leader.record_loss("c", key, 2).await.unwrap();
        leader
            .set_status(&cancelled, JobStatus::Cancelled)
            .await
            .unwrap();
        let odd = job(&leader, "o").await;
        let zk = session.zookeeper();
        let extra = format!("{}/extra/deeper", leader.layout().job("o"));
        zk.create(
            &extra[..extra.rfind('/').unwrap()],
            &[],
            &zookeeper_client::CreateMode::Persistent
                .with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .unwrap();
        let kept = job(&leader, "kept").await;
        let victims: Vec<StoredJob> = ["d", "c", "o"]
            .iter()
            .map(|id| async { leader.read_job(id).await.unwrap().unwrap() })
            .collect::<futures::future::JoinAll<_>>()
            .await;
        assert_eq!(victims.len(), 3, "{odd:?}");
        assert_eq!(
            leader.read_losses("d").await.unwrap().get(&key),
            Some(&2),
            "the compact job's lost run"
        );
        leader.collect(&victims, &[]).await.unwrap();
        let left = leader.list_job_ids().await.unwrap();
        assert_eq!(left, vec![kept.id], "only the job not collected is left");
    });
}

/// A finished job's shard outputs in the store are deleted at once (they
/// are merged into its result), small job or not; a big job's commits go
/// too, a small job's stay for collection.
#[test]
fn cleaning_a_finished_job_deletes_its_shard_objects() {
    use ringleader::coord::{OutputRef, ShardOutput};
    use ringleader::core::ShardKey;
    with_master(async |leader| {
        let big_output = vec![7u8; 300 * 1024];
        // A compact job of one shard, and a job of 65 shards whose tasks
        // are too big for its record.
        for (id, shards, task_len) in [("small", 1u32, 1), ("big", 65, 300)] {
            let tasks: Vec<ByteBuf> = (0..shards)
                .map(|i| ByteBuf::from(vec![i as u8; task_len]))
                .collect();
            let mut rec = record();
            rec.tasks_total = u64::from(shards);
            let job = leader.create_job(id, rec, &tasks).await.unwrap();
            let mut objects = Vec::new();
            for index in 0..shards {
                let key = ShardKey {
                    index,
                    generation: 0,
                };
                let out = ShardOutput::Bytes(big_output.clone());
                let r = leader
                    .commit(JobRef::of(&job), key, 1, out, Vec::new())
                    .await
                    .unwrap();
                let OutputRef::Object(name) = r.record.output else {
                    panic!("a 300 KiB output is not inline: {:?}", r.record.output)
                };
                objects.push(name);
            }
            leader.clean_finished(&job, &objects).await.unwrap();
            for name in &objects {
                let read = leader.read_output(&OutputRef::Object(name.clone())).await;
                assert!(read.is_err(), "{id}: {name} still in the store");
            }
            let commits = leader.read_commits(&job).await.unwrap();
            let kept = if shards == 1 { 1 } else { 0 };
            assert_eq!(commits.len(), kept, "{id}: commits left");
        }
    });
}

/// A fetch's mark of a record read before it changed writes nothing: the
/// copy read is never written back over what the job (or another job
/// under its id) is now (issue 29, finding 6: `mark_fetched` wrote
/// without a version check).
#[test]
fn a_fetch_mark_of_a_stale_record_changes_nothing() {
    with_master(async |leader| {
        let stale = job(&leader, "m").await;
        leader
            .finish(&stale, vec![1], Vec::new(), done(), false)
            .await
            .unwrap();
        let before = leader.read_job("m").await.unwrap().unwrap();
        assert_ne!(before.version, stale.version, "the record changed");
        leader.mark_fetched(&stale).await.unwrap();
        let after = leader.read_job("m").await.unwrap().unwrap();
        assert_eq!(after.record, before.record);
        assert_eq!(after.version, before.version);
        // Marked from the record as it is, it is marked.
        leader.mark_fetched(&after).await.unwrap();
        let marked = leader.read_job("m").await.unwrap().unwrap();
        assert!(marked.record.fetched_ms.is_some());
    });
}

/// Collecting a job that may have objects no record names (a run lost
/// with its worker's link wrote its output; its report never came)
/// empties its store directories; a job not swept keeps its objects, and
/// so does job `a.b` when `a` is swept (directories are whole segments),
/// and so does another incarnation of `a` (a job submitted again under
/// its id: issue 29, finding 1).
#[test]
fn collecting_a_job_with_lost_runs_empties_its_store_directories() {
    with_master(async |leader| {
        let store = leader.store().clone();
        let mut names = std::collections::BTreeMap::new();
        for id in ["a", "a.b", "c"] {
            let name = Store::shard_output_name((id, INC), "0-0", 1, 1).unwrap();
            store.put_new(&name, vec![1; 10]).await.unwrap();
            names.insert(id, name);
        }
        let again = Store::shard_output_name(("a", INC + 1), "0-0", 1, 1).unwrap();
        store.put_new(&again, vec![1; 10]).await.unwrap();
        names.insert("a again", again);
        let result = Store::result_name(("a", INC), 1).unwrap();
        store.put_new(&result, vec![2; 10]).await.unwrap();
        let victims = vec![job(&leader, "a").await, job(&leader, "c").await];
        leader.collect(&victims, &["a".to_string()]).await.unwrap();
        let left = store.list("").await.unwrap();
        assert!(
            !left.contains(&names["a"]),
            "a's orphan output is gone: {left:?}"
        );
        assert!(
            !left.contains(&result),
            "a's orphan result is gone: {left:?}"
        );
        assert!(left.contains(&names["a.b"]), "a.b's output stays: {left:?}");
        assert!(left.contains(&names["c"]), "c was not swept: {left:?}");
        assert!(
            left.contains(&names["a again"]),
            "a's next incarnation keeps its output: {left:?}"
        );
        assert_eq!(left.len(), 3, "{left:?}");
    });
}
