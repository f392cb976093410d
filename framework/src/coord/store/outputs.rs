//! Where outputs live: inline in a record when small, else an object of
//! the cluster's store; read either way, deleted by name.

use bytes::Bytes;
use serde_bytes::ByteBuf;

use super::{LeaderStore, INLINE_LIMIT};
use crate::coord::records::OutputRef;
use crate::coord::zk::CoordError;
use crate::store::Store;

impl LeaderStore {
    /// The cluster's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where an output goes: inline if small, else a new object of the
    /// store (create-only, a name no other writer uses).
    pub(super) async fn output_ref(
        &self,
        name: String,
        bytes: Vec<u8>,
    ) -> Result<OutputRef, CoordError> {
        Ok(self.output_ref_kept(name, bytes).await?.0)
    }

    /// [`Self::output_ref`], with the bytes of an output that went to the
    /// store kept (shared with the write, not copied).
    pub(super) async fn output_ref_kept(
        &self,
        name: String,
        bytes: Vec<u8>,
    ) -> Result<(OutputRef, Option<Bytes>), CoordError> {
        if bytes.len() <= INLINE_LIMIT {
            return Ok((OutputRef::Inline(ByteBuf::from(bytes)), None));
        }
        let bytes = Bytes::from(bytes);
        self.store.put_new(&name, bytes.clone()).await?;
        Ok((OutputRef::Object(name), Some(bytes)))
    }

    /// Reads an output stored inline, in the store, or (written by earlier
    /// versions) in a file.
    pub async fn read_output(&self, output: &OutputRef) -> Result<Vec<u8>, CoordError> {
        match output {
            OutputRef::Inline(b) => Ok(b.to_vec()),
            OutputRef::Object(name) => Ok(self.store.get(name).await?.to_vec()),
            OutputRef::File(p) => tokio::fs::read(p).await.map_err(|source| CoordError::File {
                path: p.clone(),
                source,
            }),
        }
    }

    /// Deletes the store objects among `outputs` (inline outputs have
    /// none). Exactly the names records referenced: nothing is listed, so
    /// no other job's objects can be touched. A failure is logged, and the
    /// object is left behind rather than the caller stopped.
    pub async fn delete_outputs<'a>(&self, outputs: impl IntoIterator<Item = &'a OutputRef>) {
        for o in outputs {
            if let OutputRef::Object(name) = o {
                if let Err(e) = self.store.delete(name).await {
                    tracing::warn!(object = %name, error = %e, "cannot delete an object from the store");
                }
            }
        }
    }
}
