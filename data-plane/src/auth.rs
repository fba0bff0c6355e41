//! Route authentication: JWT validation (`jwt`) against key sets (`jwks`) that are read and
//! fetched off the request path, and external authorization (`ext_authz`, Envoy's gRPC API).

pub mod ext_authz;
pub mod jwks;
pub mod jwt;
