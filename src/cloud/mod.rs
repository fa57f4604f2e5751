//! The cloud side: protocol types, the long-poll session logic and its HTTP driver.
//!
//! [`wire`] holds protocol v1's JSON types, [`session`] the timing rules as a pure state
//! machine, [`driver`] the one task that performs HTTP requests, and [`tls`] builds the
//! client (trust, identity, token).
pub mod driver;
pub mod session;
pub mod tls;
pub mod wire;
