//! The core's plain values as frames and records encode them. The core
//! crate knows no serde (its manifest says so): its `ShardKey`,
//! `TaskFailure` and `Counters` are encoded through the definitions here,
//! field by field (`#[serde(with = "...")]`), with the same field names
//! and order as ever, so that nothing changes on the wire or in
//! ZooKeeper (the golden files check it).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::{Counters, ShardKey, TaskFailure};

/// [`ShardKey`]'s encoding.
#[derive(Serialize, Deserialize)]
#[serde(remote = "ShardKey")]
pub struct ShardKeyDef {
    index: u32,
    generation: u32,
}

/// [`TaskFailure`]'s encoding.
#[derive(Serialize, Deserialize)]
#[serde(remote = "TaskFailure")]
pub struct TaskFailureDef {
    index: u64,
    error: String,
    attempt: u32,
    retryable: bool,
}

/// [`Counters`]' encoding.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Counters")]
pub struct CountersDef {
    tasks_total: u64,
    tasks_done: u64,
    tasks_failed: u64,
    retries: u64,
}

/// A core value with an encoding here.
pub trait Encoded: Sized {
    /// Encodes it.
    fn encode<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error>;
    /// Decodes one.
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

macro_rules! encoded {
    ($($ty:ty => $def:ty),* $(,)?) => {
        $(impl Encoded for $ty {
            fn encode<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$def>::serialize(self, s)
            }
            fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <$def>::deserialize(d)
            }
        })*
    };
}

encoded!(ShardKey => ShardKeyDef, TaskFailure => TaskFailureDef, Counters => CountersDef);

/// A core value, borrowed, as serde encodes it.
pub struct Enc<'a, T>(pub &'a T);

impl<T: Encoded> Serialize for Enc<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.encode(s)
    }
}

/// Core values, borrowed, as serde encodes them (a sequence).
pub struct EncList<'a, T>(pub &'a [T]);

impl<T: Encoded> Serialize for EncList<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        list::serialize(self.0, s)
    }
}

/// A core value as serde decodes it.
pub struct Dec<T>(pub T);

impl<'de, T: Encoded> Deserialize<'de> for Dec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::decode(d).map(Dec)
    }
}

/// A list of core values (`#[serde(with = "core_serde::list")]`).
pub mod list {
    use super::*;

    /// Encodes every value, as a sequence.
    pub fn serialize<T: Encoded, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(Enc))
    }

    /// Decodes a sequence.
    pub fn deserialize<'de, T: Encoded, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        Ok(Vec::<Dec<T>>::deserialize(d)?
            .into_iter()
            .map(|Dec(v)| v)
            .collect())
    }
}

/// A core value or none (`#[serde(with = "core_serde::maybe")]`).
pub mod maybe {
    use super::*;

    /// Encodes the value, or nil.
    pub fn serialize<T: Encoded, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(Enc).serialize(s)
    }

    /// Decodes a value, or nil.
    pub fn deserialize<'de, T: Encoded, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        Ok(Option::<Dec<T>>::deserialize(d)?.map(|Dec(v)| v))
    }
}
