//! What clients talk to: HTTP routes, the websocket session, the `imgfetch.fetch` endpoint,
//! the web viewer, and the accept loop that serves them.
//!
//! - [`http`]: routes, status codes, health and metrics.
//! - [`ws`]: the websocket session protocol.
//! - [`fetch`]: the `imgfetch-gateway` micro service and its `imgfetch.fetch` endpoint.
//! - [`viewer`]: the web viewer at `/`, static files compiled into the binary.
//! - [`serve`]: the accept loop: connection cap, header-read timeout, graceful shutdown.
//!
//! Nothing below `api` uses it.

pub mod fetch;
pub mod http;
pub mod serve;
pub mod viewer;
pub mod ws;
