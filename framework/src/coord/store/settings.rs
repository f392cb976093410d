//! The cluster's scheduling settings the master keeps: the fairness keys'
//! weights (`/fairness`) and the limits (`/limits`). Read at each
//! takeover, written whole by the master (one writer: requests to it are
//! handled in order), over the version read.

use serde::de::DeserializeOwned;
use serde::Serialize;
use zookeeper_client::Error as ZkError;

use super::batch::Op;
use super::{retry_loss, LeaderStore};
use crate::coord::records::{FairnessRecord, LimitsRecord};
use crate::coord::zk::{decode_record, encode_record, CoordError};

impl LeaderStore {
    /// The weights as stored (a record that does not decode, a later
    /// release's or garbage, as the inner error; none: every key weighs 1).
    pub async fn read_fairness(&self) -> Result<Result<FairnessRecord, CoordError>, CoordError> {
        Ok(self.read_setting(&self.layout.fairness()).await?.0)
    }

    /// Changes the weights with `change`, written whole over the record
    /// read (one that does not decode is replaced, said in the log).
    pub async fn update_fairness(
        &self,
        change: impl FnOnce(&mut FairnessRecord),
    ) -> Result<(), CoordError> {
        self.update_setting("fairness", &self.layout.fairness(), change)
            .await
    }

    /// The limits as stored (as [`LeaderStore::read_fairness`]; none: no
    /// limit).
    pub async fn read_limits(&self) -> Result<Result<LimitsRecord, CoordError>, CoordError> {
        Ok(self.read_setting(&self.layout.limits()).await?.0)
    }

    /// Changes the limits with `change` (as
    /// [`LeaderStore::update_fairness`]).
    pub async fn update_limits(
        &self,
        change: impl FnOnce(&mut LimitsRecord),
    ) -> Result<(), CoordError> {
        self.update_setting("limits", &self.layout.limits(), change)
            .await
    }

    /// A setting's record as stored (the inner error: it does not
    /// decode), and its version (`None`: no record, the default).
    async fn read_setting<T: DeserializeOwned + Default>(
        &self,
        path: &str,
    ) -> Result<(Result<T, CoordError>, Option<i32>), CoordError> {
        match retry_loss(|| self.client().get_data(path)).await {
            Ok((data, stat)) => Ok((decode_record(path, &data), Some(stat.version))),
            Err(ZkError::NoNode) => Ok((Ok(T::default()), None)),
            Err(e) => Err(CoordError::zk(path, e)),
        }
    }

    /// Reads a setting's record, changes it, and writes it whole, fenced,
    /// over the version read: two changes at once cannot lose one (the
    /// second is refused, and retried by its requester).
    async fn update_setting<T: Serialize + DeserializeOwned + Default>(
        &self,
        op: &'static str,
        path: &str,
        change: impl FnOnce(&mut T),
    ) -> Result<(), CoordError> {
        let (record, version) = self.read_setting::<T>(path).await?;
        let mut record = record.unwrap_or_else(|e| {
            tracing::warn!(error = %e, path, "writing a setting over a record that does not decode");
            T::default()
        });
        change(&mut record);
        let data = encode_record(path, &record)?;
        let op_ = match version {
            Some(v) => Op::set(path.to_string(), data, Some(v)),
            None => Op::create(path.to_string(), data),
        };
        self.fenced_alone(op, path, &[op_]).await
    }
}
