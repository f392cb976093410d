//! Deleting collected jobs: their znodes (listed level by level, deleted
//! in shared fenced multis under the request budget), the store objects
//! their records name, and, for jobs that may have objects no record
//! names (a run lost with its link), everything in their store
//! directories.

use std::time::Duration;

use zookeeper_client::Error as ZkError;

use super::{retry_loss, LeaderStore, Op, StoredJob};
use crate::coord::records::{JobStatus, OutputRef};
use crate::coord::zk::CoordError;
use crate::store::Store;

/// Deletes per transaction of a deletion.
const DELETE_CHUNK: usize = 200;
/// Children lists per multi-read request.
const LISTS_PER_READ: usize = 32;
/// The shortest pause between two transactions of one deletion.
const DELETE_PAUSE: Duration = Duration::from_millis(5);

impl LeaderStore {
    /// Deletes the jobs `victims` (chosen by [`crate::core::job::Retention`]):
    /// their znodes, and the store objects their records name (the result
    /// of a finished job, the committed outputs of a cancelled one). The
    /// reads are pipelined across the victims, and their znodes go in
    /// shared transactions: a thousand small jobs cost a few round trips.
    /// The store directories of the jobs `sweep` names are emptied too
    /// (see [`LeaderStore::sweep_store`]).
    pub async fn collect(&self, victims: &[StoredJob], sweep: &[String]) -> Result<(), CoordError> {
        let results = futures::future::join_all(victims.iter().map(|j| self.read_result(j)));
        let mut outputs: Vec<OutputRef> = Vec::new();
        for r in results.await {
            if let Some(r) = r? {
                outputs.push(r.output);
            }
        }
        for job in victims {
            // A finished job's shard outputs went when it ended, except a
            // streamed one's (kept for its streams) or a cancelled one's.
            if job.record.status == JobStatus::Cancelled || job.record.options.stream {
                match self.read_commits(job).await {
                    Ok(commits) => outputs.extend(commits.into_values().map(|r| r.output)),
                    Err(e) => {
                        tracing::warn!(job = %job.id, error = %e, "cannot read a cancelled job's commits; its objects stay in the store")
                    }
                }
            }
        }
        let doomed = self.job_trees(victims).await?;
        match self.delete_all(&doomed).await {
            Ok(()) => {}
            // A znode the layout does not name (an older version's): list
            // everything and delete what is there.
            Err(CoordError::Zk {
                source: ZkError::NotEmpty,
                ..
            }) => {
                let roots: Vec<String> = victims.iter().map(|j| self.layout.job(&j.id)).collect();
                let mut doomed = self.descendants(&roots).await?;
                doomed.extend(roots);
                self.delete_all(&doomed).await?;
            }
            Err(e) => return Err(e),
        }
        self.delete_outputs(&outputs).await;
        let swept: Vec<(String, u64)> = victims
            .iter()
            .filter(|j| sweep.contains(&j.id))
            .map(|j| (j.id.clone(), j.record.incarnation))
            .collect();
        self.sweep_store(&swept).await;
        Ok(())
    }

    /// Deletes every object in the store directories of the jobs `ids`
    /// (their shard outputs and results), named by records or not: what a
    /// run lost with its worker's link may have left. Directories are
    /// whole path segments, so job `a` never touches job `a.b`'s, and each
    /// incarnation of a job id has its own: a late sweep of a collected
    /// job never touches the outputs of a job submitted again under its
    /// id. A failure is logged, and the objects are left behind.
    pub async fn sweep_store(&self, ids: &[(String, u64)]) {
        for (id, incarnation) in ids {
            let incarnation = *incarnation;
            for dir in [
                Store::job_dir(id, incarnation),
                Store::result_dir(id, incarnation),
            ] {
                let swept = match dir {
                    Ok(dir) => self.store.delete_dir(&dir).await,
                    Err(e) => Err(e),
                };
                match swept {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(job = %id, objects = n, "deleted objects no record named")
                    }
                    Err(e) => {
                        tracing::warn!(job = %id, error = %e, "cannot empty a collected job's store directory")
                    }
                }
            }
        }
    }

    /// Deletes a subtree with fenced multis under the request budget.
    pub async fn delete_tree(&self, path: &str) -> Result<(), CoordError> {
        let mut doomed = self.descendants(&[path.to_string()]).await?;
        doomed.push(path.to_string());
        self.delete_all(&doomed).await
    }

    pub(super) async fn delete_children(&self, path: &str) -> Result<(), CoordError> {
        let doomed = self.descendants(&[path.to_string()]).await?;
        self.delete_all(&doomed).await
    }

    /// Every znode of the jobs, children before parents. The layout says
    /// which znodes have children: only each job's `batches`, `lost` and
    /// `done`, and `done`'s buckets, are listed (two round trips for all the
    /// jobs together); the result exists exactly when the job is done.
    async fn job_trees(&self, all: &[StoredJob]) -> Result<Vec<String>, CoordError> {
        let (compact, jobs): (Vec<&StoredJob>, Vec<&StoredJob>) =
            all.iter().partition(|j| j.record.is_compact());
        let mut doomed = self.compact_trees(&compact).await?;
        let mut dirs = Vec::with_capacity(jobs.len() * 3);
        for j in &jobs {
            let path = self.layout.job(&j.id);
            dirs.push(format!("{path}/batches"));
            dirs.push(self.layout.lost(&j.id));
            dirs.push(self.layout.done(&j.id));
        }
        let entries = self.list_all(&dirs).await?;
        let buckets: Vec<String> = dirs
            .iter()
            .zip(&entries)
            .skip(2)
            .step_by(3)
            .flat_map(|(done, names)| names.iter().map(move |b| format!("{done}/{b}")))
            .collect();
        let commits = self.list_all(&buckets).await?;
        doomed.extend(
            buckets
                .iter()
                .zip(&commits)
                .flat_map(|(bucket, names)| names.iter().map(move |c| format!("{bucket}/{c}"))),
        );
        doomed.extend(buckets.iter().cloned());
        for (dir, names) in dirs
            .iter()
            .zip(&entries)
            .filter(|(d, _)| !d.ends_with("/done"))
        {
            doomed.extend(names.iter().map(|n| format!("{dir}/{n}")));
        }
        doomed.extend(dirs);
        for j in jobs {
            if j.record.status == JobStatus::Done {
                doomed.push(self.layout.result(&j.id));
            }
            doomed.push(self.layout.job(&j.id));
        }
        Ok(doomed)
    }

    /// Every znode of compact jobs ([`crate::coord::JobRecord::is_compact`]),
    /// children before parents: each job's children (commit records,
    /// `result`, `lost` if a run was lost), listed in one round trip for
    /// all, and `lost`'s in a second where there is one.
    async fn compact_trees(&self, jobs: &[&StoredJob]) -> Result<Vec<String>, CoordError> {
        let roots: Vec<String> = jobs.iter().map(|j| self.layout.job(&j.id)).collect();
        let children = self.list_all(&roots).await?;
        let lost: Vec<String> = roots
            .iter()
            .zip(&children)
            .filter(|(_, names)| names.iter().any(|n| n == "lost"))
            .map(|(root, _)| format!("{root}/lost"))
            .collect();
        let mut doomed = Vec::new();
        for (dir, names) in lost.iter().zip(self.list_all(&lost).await?) {
            doomed.extend(names.iter().map(|n| format!("{dir}/{n}")));
        }
        for (root, names) in roots.iter().zip(&children) {
            doomed.extend(names.iter().map(|n| format!("{root}/{n}")));
        }
        doomed.extend(roots);
        Ok(doomed)
    }

    /// The children of each path, pipelined (none for a path that is gone).
    async fn list_all(&self, paths: &[String]) -> Result<Vec<Vec<String>>, CoordError> {
        use zookeeper_client::MultiReadResult;
        // Many lists per request (ZooKeeper's multi-read): collecting a
        // batch of small jobs costs a few requests, not four per job. The
        // chunks stay small enough for their answers (a bucket lists up to
        // a thousand commits) to fit a response; they are pipelined.
        let lists = paths.chunks(LISTS_PER_READ).map(|chunk| {
            retry_loss(move || {
                let mut reader = self.client().new_multi_reader();
                let added = chunk.iter().try_for_each(|p| reader.add_get_children(p));
                async move {
                    added?;
                    reader.commit().await
                }
            })
        });
        let mut out = Vec::with_capacity(paths.len());
        for (chunk, listed) in paths
            .chunks(LISTS_PER_READ)
            .zip(futures::future::join_all(lists).await)
        {
            let listed = listed.map_err(|e| CoordError::zk(&chunk[0], e))?;
            if listed.len() != chunk.len() {
                return Err(CoordError::Garbage {
                    path: chunk[0].clone(),
                    reason: format!(
                        "a multi-read of {} lists answered {}",
                        chunk.len(),
                        listed.len()
                    ),
                });
            }
            for (p, one) in chunk.iter().zip(listed) {
                out.push(match one {
                    MultiReadResult::Children { children } => children,
                    MultiReadResult::Error {
                        err: ZkError::NoNode,
                    } => Vec::new(),
                    MultiReadResult::Error { err } => return Err(CoordError::zk(p, err)),
                    other => {
                        return Err(CoordError::Garbage {
                            path: p.clone(),
                            reason: format!("a list answered {other:?}"),
                        })
                    }
                });
            }
        }
        Ok(out)
    }

    /// Every znode under `roots` (not the roots), deepest first: listed
    /// level by level, each level's lists pipelined.
    async fn descendants(&self, roots: &[String]) -> Result<Vec<String>, CoordError> {
        let mut levels: Vec<Vec<String>> = Vec::new();
        let mut frontier: Vec<String> = roots.to_vec();
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for (p, children) in frontier.iter().zip(self.list_all(&frontier).await?) {
                next.extend(children.into_iter().map(|c| format!("{p}/{c}")));
            }
            levels.push(next.clone());
            frontier = next;
        }
        Ok(levels.into_iter().rev().flatten().collect())
    }

    /// Deletes `paths` in this order (children before their parents), in
    /// fenced multis of at most [`DELETE_CHUNK`], each sent alone (see
    /// [`LeaderStore::fenced_alone`]); a multi that meets a znode already
    /// gone (deleted by us before a connection loss, or by a cleanup) is
    /// done one by one.
    async fn delete_all(&self, paths: &[String]) -> Result<(), CoordError> {
        let mut last = Duration::ZERO;
        for (i, chunk) in paths.chunks(DELETE_CHUNK).enumerate() {
            let Some(first) = chunk.first() else {
                continue;
            };
            if i > 0 {
                // Background work: a big deletion takes at most about half
                // of ZooKeeper's time (a pause as long as the last
                // transaction took), so that commits are not queued behind
                // a thousand transactions of deletes in a row.
                tokio::time::sleep(last.max(DELETE_PAUSE)).await;
            }
            let started = std::time::Instant::now();
            let deletes: Vec<Op> = chunk.iter().map(Op::delete).collect();
            let res = self.fenced_alone("delete", first, &deletes).await;
            // The pause follows the transaction, not a fallback's deletes
            // one at a time after it.
            last = started.elapsed();
            match res {
                Ok(()) => {}
                Err(CoordError::Zk {
                    source: ZkError::NoNode,
                    ..
                }) => {
                    for p in chunk {
                        let delete = [Op::delete(p)];
                        match self.fenced_alone("delete", p, &delete).await {
                            Ok(())
                            | Err(CoordError::Zk {
                                source: ZkError::NoNode,
                                ..
                            }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
