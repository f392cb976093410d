//! The cluster's feature level: what a node of an earlier release could
//! not follow (a record it could not read) stays off until every live
//! node follows it; then an operator raises the level (`features
//! upgrade`), and it is never lowered. This module owns the levels this
//! build knows and the two decisions about them: whether a node may join
//! a cluster at a level, and how far the level may be raised. Pure: the
//! caller reads ZooKeeper.

/// The highest level this build follows.
pub const SUPPORTED: u32 = 2;

/// Level 1: result records (`jobs/<id>/result`, and a compact job's in its
/// record) are written as maps of named fields, so that they can gain
/// fields; a node of the release before reads them only as arrays.
pub const NAMED_RESULTS: u32 = 1;

/// Level 2: delayed jobs (`JobOptions::not_before_ms`) and limits
/// (`limits set`, `submit --under`) are accepted: a master of a release
/// before them would start delayed jobs at once, and ignore limits.
pub const SCHEDULING: u32 = 2;

/// What each level turns on, for `features show`.
pub const LEVELS: &[(u32, &str)] = &[
    (
        NAMED_RESULTS,
        "result records are written as maps of named fields (they can gain fields)",
    ),
    (
        SCHEDULING,
        "delayed jobs (`submit --delay`, `--at`) and limits (`limits set`, `submit --under`) \
         are accepted (a master of an earlier release would start delayed jobs at once and \
         ignore limits)",
    ),
];

/// The level a cluster that never had a master starts at, its first
/// nodes `live`: what they all follow (a new cluster has every feature
/// its nodes know; one made by an earlier release keeps its level until
/// `features upgrade`).
pub fn initial(live: &[Live]) -> u32 {
    live.iter().map(|l| l.follows).fold(SUPPORTED, u32::min)
}

/// A live node, as the level's decisions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// Its id.
    pub node: String,
    /// The highest level it follows: 0 for a node of a release that did
    /// not say (it follows none).
    pub follows: u32,
}

/// Why a node may not join, or the level not be raised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// The cluster is at a level this build does not follow.
    #[error(
        "the cluster's feature level is {cluster} and this build follows up to {supported}: it \
         could not read what the cluster writes. Run a build that follows level {cluster} (see \
         CHANGELOG.md); the level is never lowered"
    )]
    TooNew {
        /// The cluster's level.
        cluster: u32,
        /// This build's highest.
        supported: u32,
    },
    /// Live nodes follow no higher level than the current one.
    #[error(
        "the feature level stays {current}: {} follow no higher level; upgrade them, then run \
         `features upgrade` again",
        held_back(.nodes)
    )]
    HeldBack {
        /// The cluster's level.
        current: u32,
        /// The nodes that hold it back, with the level each follows.
        nodes: Vec<(String, u32)>,
    },
    /// The level is already the highest this build follows.
    #[error("the feature level is {current}, the highest this build follows: nothing to raise")]
    Highest {
        /// The cluster's level.
        current: u32,
    },
}

fn held_back(nodes: &[(String, u32)]) -> String {
    let named: Vec<String> = nodes
        .iter()
        .map(|(n, l)| match l {
            0 => format!("{n} (a release before feature levels)"),
            l => format!("{n} (follows {l})"),
        })
        .collect();
    named.join(", ")
}

/// Whether a node of this build may join a cluster at `level`.
pub fn may_join(level: u32) -> Result<(), FeatureError> {
    if level > SUPPORTED {
        return Err(FeatureError::TooNew {
            cluster: level,
            supported: SUPPORTED,
        });
    }
    Ok(())
}

/// The level `features upgrade` raises a cluster at `current` to: the
/// highest that this build and every live node follow, if it is higher.
pub fn raise_to(current: u32, live: &[Live]) -> Result<u32, FeatureError> {
    let target = live.iter().map(|l| l.follows).fold(SUPPORTED, u32::min);
    if target > current {
        return Ok(target);
    }
    if current >= SUPPORTED {
        return Err(FeatureError::Highest { current });
    }
    let nodes = live
        .iter()
        .filter(|l| l.follows <= current)
        .map(|l| (l.node.clone(), l.follows))
        .collect();
    Err(FeatureError::HeldBack { current, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(node: &str, follows: u32) -> Live {
        Live {
            node: node.into(),
            follows,
        }
    }

    #[test]
    fn the_level_rises_to_what_every_live_node_follows_and_no_further() {
        let all = [live("a", SUPPORTED), live("b", SUPPORTED + 3)];
        assert_eq!(raise_to(0, &all), Ok(SUPPORTED));
        assert_eq!(
            raise_to(SUPPORTED, &all),
            Err(FeatureError::Highest { current: SUPPORTED })
        );
        // A node of a release before levels holds it at 0, and is named.
        let mixed = [live("a", SUPPORTED), live("old", 0)];
        let err = raise_to(0, &mixed).unwrap_err();
        assert_eq!(
            err,
            FeatureError::HeldBack {
                current: 0,
                nodes: vec![("old".into(), 0)]
            }
        );
        assert!(err
            .to_string()
            .contains("old (a release before feature levels)"));
        // No live node: this build's own.
        assert_eq!(raise_to(0, &[]), Ok(SUPPORTED));
    }

    #[test]
    fn a_new_cluster_starts_at_the_level_every_first_node_follows() {
        assert_eq!(initial(&[]), SUPPORTED);
        assert_eq!(initial(&[live("a", SUPPORTED)]), SUPPORTED);
        assert_eq!(initial(&[live("a", SUPPORTED), live("b", 1)]), 1);
        assert_eq!(initial(&[live("a", SUPPORTED), live("old", 0)]), 0);
    }

    #[test]
    fn a_node_joins_only_a_cluster_at_a_level_it_follows() {
        assert_eq!(may_join(0), Ok(()));
        assert_eq!(may_join(SUPPORTED), Ok(()));
        let err = may_join(SUPPORTED + 1).unwrap_err();
        assert!(err.to_string().contains("never lowered"), "{err}");
    }
}
