//! The cluster's scheduling settings the master keeps: the fairness keys'
//! weights (`/fairness`). Read at each takeover, written whole by the
//! master (one writer: requests to it are handled in order).

use zookeeper_client::Error as ZkError;

use super::batch::Op;
use super::{retry_loss, LeaderStore};
use crate::coord::records::FairnessRecord;
use crate::coord::zk::{decode_record, encode_record, CoordError};

impl LeaderStore {
    /// The weights as stored (a record that does not decode, a later
    /// release's or garbage, as the inner error), and the record's
    /// version (`None`: no record, every key weighs 1).
    pub async fn read_fairness(
        &self,
    ) -> Result<(Result<FairnessRecord, CoordError>, Option<i32>), CoordError> {
        let path = self.layout.fairness();
        match retry_loss(|| self.client().get_data(&path)).await {
            Ok((data, stat)) => Ok((decode_record(&path, &data), Some(stat.version))),
            Err(ZkError::NoNode) => Ok((Ok(FairnessRecord::default()), None)),
            Err(e) => Err(CoordError::zk(path, e)),
        }
    }

    /// Writes the weights whole, fenced: over the record of `version`, or
    /// as a new one (`None`).
    pub async fn write_fairness(
        &self,
        record: &FairnessRecord,
        version: Option<i32>,
    ) -> Result<(), CoordError> {
        let path = self.layout.fairness();
        let data = encode_record(&path, record)?;
        let op = match version {
            Some(v) => Op::set(path.clone(), data, Some(v)),
            None => Op::create(path.clone(), data),
        };
        self.fenced_alone("fairness", &path, &[op]).await
    }
}
