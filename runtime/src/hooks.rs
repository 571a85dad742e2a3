//! Host-side OCI hooks (`createRuntime`, `prestart`, `poststart`, `poststop`), run on the
//! host with the container's state on stdin. The guest-side ones (`createContainer`,
//! `startContainer`) are the agent's.

use std::path::Path;

use oci_spec::runtime::Spec;

use crate::state::ContainerState;

/// A failed hook; the message names it (`hooks.prestart[0] (/path): exited with 1`).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HostHookError(#[from] moat_agent::container::hooks::HookError);

/// Runs the spec's hooks of `phase` in order (in the bundle directory).
pub fn run_host(
    spec: &Spec,
    phase: &'static str,
    st: &ContainerState,
    bundle: &Path,
) -> Result<(), HostHookError> {
    let Some(h) = spec.hooks().as_ref() else {
        return Ok(());
    };
    #[allow(deprecated)]
    let list = match phase {
        "createRuntime" => h.create_runtime(),
        "prestart" => h.prestart(),
        "poststart" => h.poststart(),
        "poststop" => h.poststop(),
        _ => &None,
    };
    let Some(list) = list.as_ref().filter(|l| !l.is_empty()) else {
        return Ok(());
    };
    let state = serde_json::json!({
        "ociVersion": st.oci_version,
        "id": st.id,
        "status": st.status.to_string(),
        "pid": st.pid,
        "bundle": bundle,
        "annotations": st.annotations,
    })
    .to_string();
    moat_agent::container::hooks::run(phase, list, &state)?;
    Ok(())
}
