//! The application's logic, apart from any widget: the state machine.

pub mod machine;

pub use machine::{
    Choice, Decision, Effect, Input, InspectReason, Machine, Policy, Summary, VmKey,
};
