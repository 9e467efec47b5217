//! The handler plugins compiled into this build of edge.
//!
//! Each handler family is its own crate under `plugins/`; this is the one place
//! that lists them. The rest of edge finds handlers by name in the registry.

use edge_plugin_api::Registry;

/// A registry holding every plugin of this build.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    edge_respond::register(&mut r);
    edge_headers::register(&mut r);
    edge_redirect::register(&mut r);
    edge_static::register(&mut r);
    edge_proxy::register(&mut r);
    r
}
