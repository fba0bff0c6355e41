//! Generated gRPC types and services for `sluice.v1`, and for Envoy's external authorization API
//! (`envoy.service.auth.v3.Authorization/Check`, from the protos in `vendor/`). Generated code
//! only: conversions to the validated model live with their users.

#![allow(clippy::all, missing_docs, unreachable_pub)]

pub mod codec;

pub mod v1 {
    tonic::include_proto!("sluice.v1");
}

// The Envoy modules nest like their proto packages: generated code names other packages' types
// by relative paths (`super::super::...`).

pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }

    pub mod service {
        pub mod auth {
            /// `Authorization/Check`: `authorization_client::AuthorizationClient`, and
            /// `authorization_server::{Authorization, AuthorizationServer}` to implement one.
            pub mod v3 {
                tonic::include_proto!("envoy.service.auth.v3");
            }
        }
    }

    pub mod r#type {
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
}

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod xds {
    pub mod core {
        pub mod v3 {
            tonic::include_proto!("xds.core.v3");
        }
    }
}
