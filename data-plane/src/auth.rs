//! Route authentication: JWT validation (`jwt`) against key sets (`jwks`) that are read and
//! fetched off the request path.

pub mod jwks;
pub mod jwt;
