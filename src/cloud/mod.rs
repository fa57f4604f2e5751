//! The cloud side: protocol types, the long-poll session logic and its HTTP driver.
//!
//! [`wire`] holds protocol v1's types (its JSON form), [`proto`] their Protocol Buffers form, [`session`] the timing rules as a pure state
//! machine, [`driver`] the one task that runs the link (app starts it), [`client`] the
//! HTTP requests the driver makes, `batch` the policy for how much each request carries,
//! and [`tls`] builds the client (trust, identity, token).
mod batch;
pub mod client;
pub mod driver;
pub mod proto;
pub mod session;
pub mod tls;
pub mod wire;
