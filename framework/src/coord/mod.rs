//! ZooKeeper: the znode layout, the records stored in it, and every read and
//! fenced write the cluster makes. Only this module imports zookeeper-client.
//!
//! Layout under `/ringleader/<cluster>`:
//! ```text
//! election/_c_<uuid>-latch-NNNNNNNNNN  EPHEMERAL_SEQUENTIAL  candidates (zookeeper-client's lock recipe)
//! epoch                                PERSISTENT  u64 epoch in data, never deleted
//! master                               EPHEMERAL   MasterInfo, written once recovery is done
//! nodes/<node-id>                      EPHEMERAL   NodeInfo: every live node, its build and feature level
//! features                             PERSISTENT  FeaturesRecord: the cluster's feature level (absent: 0)
//! fairness                             PERSISTENT  FairnessRecord: fairness keys' weights (absent: all 1), written by the master
//! limits                               PERSISTENT  LimitsRecord: the limits set (absent: none), written by the master
//! workers/<node-id>                    EPHEMERAL   WorkerInfo
//! jobs/<job-id>                        PERSISTENT  JobRecord
//! jobs/<job-id>/batches/<k>            PERSISTENT  encoded tasks, each request under the size budget
//! jobs/<job-id>/done/<bucket>/c<e>.<c>.<n>  PERSISTENT  commit record: [(ShardKey, ShardRecord)], one or more shards
//!                                      (a compact job's are its own children: jobs/<job-id>/c<e>.<c>.<n>;
//!                                      earlier versions wrote one shard per done/<bucket>/<i>-<g>, still read)
//! jobs/<job-id>/lost/<i>-<g>           PERSISTENT  u32: next attempt of a shard whose workers died running it
//! jobs/<job-id>/result                 PERSISTENT  ResultRecord, until fetched + retention
//! ```

mod records;
mod session;
mod store;
mod zk;

#[cfg(test)]
pub(crate) use records::CommitEntryRef;
pub use records::{
    commit_entries, new_incarnation, submission_digest, FairnessRecord, FeaturesRecord, JobRecord,
    JobStatus, LimitsRecord, MasterInfo, NodeInfo, OutputRef, RecordName, ResultForm, ResultRecord,
    ShardRecord, WorkerInfo,
};
pub use session::{Connection, Connections, Session, Won};
pub use store::Amend;
pub use store::{Committed, Finished, JobRef, LeaderStore, ShardOutput, StoredJob, INLINE_LIMIT};
pub(crate) use zk::decode_record;
#[cfg(any(test, feature = "testkit"))]
pub(crate) use zk::encode_record;
pub use zk::{
    connect, connect_with, ensure_path, parse_connect_string, read_master, wait_for_master,
    AclMode, CoordError, Layout, ZkTls, NODE_SUBJECT, REQUEST_BUDGET,
};

pub use zookeeper_client::{Client as ZkClient, SessionState};
