//! Generated gRPC types and services for `sluice.v1`. Generated code only: conversions to the
//! validated model live with their users.

#![allow(clippy::all, missing_docs, unreachable_pub)]

pub mod codec;

pub mod v1 {
    tonic::include_proto!("sluice.v1");
}
