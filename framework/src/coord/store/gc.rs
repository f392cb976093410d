//! Deleting collected jobs: their znodes (fenced multis under the request
//! budget) and the store objects their records name.

use zookeeper_client::Error as ZkError;

use super::{LeaderStore, StoredJob};
use crate::coord::records::{JobStatus, OutputRef};
use crate::coord::zk::CoordError;

impl LeaderStore {
    /// Deletes the jobs `victims` (chosen by [`crate::core::job::Retention`]):
    /// their znodes, and the store objects their records name (the result
    /// of a finished job, the committed outputs of a cancelled one).
    pub async fn collect(&self, victims: &[StoredJob]) -> Result<(), CoordError> {
        for job in victims {
            let mut outputs: Vec<OutputRef> = Vec::new();
            if let Some(r) = self.read_result(&job.id).await? {
                outputs.push(r.output);
            }
            if job.record.status == JobStatus::Cancelled {
                match self.read_commits(&job.id).await {
                    Ok(commits) => outputs.extend(commits.into_values().map(|r| r.output)),
                    Err(e) => {
                        tracing::warn!(job = %job.id, error = %e, "cannot read a cancelled job's commits; its objects stay in the store")
                    }
                }
            }
            self.delete_tree(&self.layout.job(&job.id)).await?;
            self.delete_outputs(&outputs).await;
        }
        Ok(())
    }

    /// Deletes a subtree with fenced multis under the request budget.
    pub async fn delete_tree(&self, path: &str) -> Result<(), CoordError> {
        self.delete_children_rec(path).await?;
        match self
            .retry("delete", path, || self.lock.delete(path, None))
            .await
        {
            Ok(())
            | Err(CoordError::Zk {
                source: ZkError::NoNode,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn delete_children(&self, path: &str) -> Result<(), CoordError> {
        self.delete_children_rec(path).await
    }

    fn delete_children_rec<'a>(
        &'a self,
        path: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), CoordError>> {
        Box::pin(async move {
            let children = match self.client().list_children(path).await {
                Ok(c) => c,
                Err(ZkError::NoNode) => return Ok(()),
                Err(e) => return Err(CoordError::zk(path, e)),
            };
            let mut leaves = Vec::new();
            for c in children {
                let child = format!("{path}/{c}");
                let stat = self
                    .client()
                    .check_stat(&child)
                    .await
                    .map_err(|e| CoordError::zk(&child, e))?;
                if stat.is_some_and(|s| s.num_children > 0) {
                    self.delete_children_rec(&child).await?;
                }
                leaves.push(child);
            }
            for chunk in leaves.chunks(500) {
                let res = self
                    .fenced("delete", path, |w| {
                        chunk.iter().try_for_each(|p| w.add_delete(p, None))
                    })
                    .await;
                match res {
                    Ok(()) => {}
                    // Someone (we, before a connection loss) deleted part: one by one.
                    Err(CoordError::Zk {
                        source: ZkError::NoNode,
                        ..
                    }) => {
                        for p in chunk {
                            match self.retry("delete", p, || self.lock.delete(p, None)).await {
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
        })
    }
}
