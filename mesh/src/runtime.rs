//! Running the mesh's processes: each is a `harness::process::ChildGuard`,
//! so normal exit, an error, a panic or Ctrl-C (once
//! `stop_children_on_signals` ran) all stop it, and none outlives the mesh.

use std::net::{SocketAddr, TcpListener};

use anyhow::bail;

/// Fail early, with the fix, when an address the mesh needs is taken.
pub fn ensure_free(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "{addr} ({what}) is not free: {e}. Is another `mesh up` running? Stop it, or use another --subnet."
        ),
    }
}
