//! Shared by the examples: the task a `minimal` node runs and a `submit`
//! client sends. A client and its nodes must agree on a task's name and
//! fields, so both take it from one place.

use ringleader::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};

/// Squares a number; fails (permanently) on overflow.
#[derive(Serialize, Deserialize)]
pub struct Square(pub u64);

impl Task for Square {
    type Output = u64;
    const NAME: &'static str = "square";
    fn run(self, _ctx: &TaskContext) -> Result<u64, TaskError> {
        self.0
            .checked_mul(self.0)
            .ok_or_else(|| TaskError::permanent(format!("{} squared overflows", self.0)))
    }
}
